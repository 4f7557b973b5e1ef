package test

import (
	"context"
	"io"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// BenchmarkTxPoolNoisyNeighbour measures a quiet tenant's p99 latency for
// SELECT 1 (one query every 5 ms for 3 s) alone, then beside a noisy
// tenant of the same pool running 64 clients flat out (a ~2 ms CPU-bound
// query each), in transaction mode with 20 server connections: without a
// cap beyond the default half of the pool, and with the noisy tenant capped at 1 and 2 held server
// connections (Config.MaxConnsPerTenant). Run with
//
//	go test -run '^$' -bench TxPoolNoisyNeighbour -benchtime 1x -count 3 ./test/
//
// On the 2-core development VM (PostgreSQL 15, Go 1.26), while other
// work kept its load average between 4 and 20, so baselines vary; quiet
// p99 alone -> beside the noisy tenant, three runs each:
//
//	cap=half  0.34->43.0  0.41->30.1  0.52->31.4  1.43->25.6  2.07->40.8 ms  (18x-128x)
//	cap=1     1.86->1.81  0.40->1.11  0.50->1.66 ms                          (1.0x-3.3x; noisy ~560 tps)
//	cap=2     0.49->1.94  0.48->0.99  0.47->2.73  2.94->4.07  2.05->1.16 ms  (0.6x-5.8x; noisy ~1,000 tps)
//
// Round-robin waiters alone do not protect the quiet tenant here: with no
// cap the noisy tenant's 20 concurrent queries saturate both cores, and
// the quiet query waits for CPU, not for a connection. A cap near the
// server's cores keeps the p99 within about 2-3x of its baseline at the
// same noisy throughput (cap=2: the CPU-bound noisy tenant loses nothing).
//
// plan-defaults is the same with no flag and no limit set: the noisy
// tenant is on the free plan, whose built-in limits (4 server
// connections, 1,000 transactions a second, 50 ms of server time a
// second) apply; the cap=N runs lift them to measure the pool's cap
// alone. plan-defaults/noisy-sleeps is plan-defaults with a noisy query
// of the same server time that takes no CPU (pg_sleep(0.002)): the
// control that tells CPU contention from the proxy's own effects.
// Figures: README "Noisy neighbours".
func BenchmarkTxPoolNoisyNeighbour(b *testing.B) {
	for _, cap := range []int{-1, -2, 0, 1, 2} {
		name, noisyQuery := "cap=half", "SELECT count(*) FROM generate_series(1, 30000)"
		switch {
		case cap == -2:
			name, noisyQuery = "plan-defaults/noisy-sleeps", "SELECT pg_sleep(0.002)"
		case cap < 0:
			name = "plan-defaults"
		case cap > 0:
			name = "cap=" + strconv.Itoa(cap)
		}
		b.Run(name, func(b *testing.B) {
			e := newProxyEnvWith(b, pgcluster.Options{Conf: map[string]string{"max_connections": "200"}},
				pool.Config{MaxConnsPerKey: 20, MaxConnsPerTenant: max(cap, 0)})
			if cap >= 0 {
				if _, err := e.cat.Update(ctxT(b), "acme", catalog.UpdateRequest{Limits: catalog.NoLimits()}); err != nil {
					b.Fatal(err)
				}
			}
			_, addr := e.startProxy(b, proxy.Config{PoolMode: proxy.PoolTransaction, Logger: zap.NewNop()})
			ctx := ctxT(b)
			quiet, err := pgx.Connect(ctx, dsn(addr, "alice.globex", tenantPassword))
			if err != nil {
				b.Fatal(err)
			}
			defer quiet.Close(ctx)
			for range b.N {
				alone := quietP99(ctx, b, quiet)
				stop := make(chan struct{})
				var wg sync.WaitGroup
				var noisyTx int64
				var mu sync.Mutex
				for range 64 {
					c, err := pgx.Connect(ctx, dsn(addr, "alice.acme", tenantPassword))
					if err != nil {
						b.Fatal(err)
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						defer c.Close(context.Background())
						n := int64(0)
						for {
							select {
							case <-stop:
								mu.Lock()
								noisyTx += n
								mu.Unlock()
								return
							default:
							}
							if _, err := c.Exec(ctx, noisyQuery); err != nil {
								b.Error(err)
								return
							}
							n++
						}
					}()
				}
				time.Sleep(500 * time.Millisecond)
				beside := quietP99(ctx, b, quiet)
				close(stop)
				wg.Wait()
				b.ReportMetric(alone, "quiet-p99-alone-ms")
				b.ReportMetric(beside, "quiet-p99-beside-ms")
				b.ReportMetric(beside/alone, "slowdown-x")
				b.ReportMetric(float64(noisyTx)/3.5, "noisy-tps")
			}
		})
	}
}

// quietP99 runs SELECT 1 every 5 ms for 3 s and returns the p99 latency
// in milliseconds.
func quietP99(ctx context.Context, b *testing.B, c *pgx.Conn) float64 {
	var lat []float64
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	end := time.Now().Add(3 * time.Second)
	for time.Now().Before(end) {
		<-tick.C
		start := time.Now()
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
	}
	slices.Sort(lat)
	return lat[len(lat)*99/100]
}

// BenchmarkTxPoolSelectOnly runs pgbench -S -M simple|prepared through the
// proxy in transaction mode (8 clients on 2 server connections, database
// tier) and reports pgbench's latency, the proxy's allocations per
// transaction (Mallocs of this process, where the proxy and the pool run;
// pgbench is a child process) and this process's CPU time per
// transaction. For scale, the same pgbench runs through the floor of any
// Go proxy: a byte relay (io.Copy each way, no protocol work) in front of
// the same database, whose CPU per transaction is what Go's network
// runtime costs on the machine. Run with
//
//	go test -run '^$' -bench TxPoolSelectOnly -benchtime 100000x ./test/
//
// On the 2-core development VM: 0.10 (simple) and 0.12 (prepared)
// proxy-allocs/query, i.e. ~2,000-2,500 allocations per run, which is
// the 8 clients' startup (SCRAM, catalog, pgbench's connection); none per
// transaction: binding, the setup check, relaying and the pool's
// take/put (waiters reuse their TxTarget's state) do not allocate.
//
// The 1-client cases (simple protocol, through the proxy and through the
// relay) are goal 3's setting of issue 15: one transaction at a time, so
// that the process is idle between any two messages and every wake-up
// of the runtime is paid per transaction. Measured 2026-11-30 03:15 UTC,
// load average 7, 20,000 transactions: 54 cpu-µs/query through the
// proxy, 51 through the relay: at one client the proxy's own work is
// within a few µs of Go's network runtime.
//
// The proxy runs in this process, so it does not get the GODEBUG setting
// that `tenantproxy serve` re-executes itself with (cmd/tenantproxy,
// sysmon.go); to measure it as served, run the benchmark with
// GODEBUG=schedtrace=2147483647 (same run: 43.6 cpu-µs/query through
// the proxy, 41.5 through the relay).
func BenchmarkTxPoolSelectOnly(b *testing.B) {
	e := newProxyEnvWith(b, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 2})
	ctx := ctxT(b)
	db := e.objectName(b, "umbrella")
	pgbench := clientTool(b, "pgbench")
	run(b, pgbench, "-i", "-q", "-s", "1", e.cluster.DSN(db))
	// The tenant's login role, named like its database, is whom the
	// proxy logs in as.
	if err := e.cluster.Exec(ctx, db, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO "+db); err != nil {
		b.Fatal(err)
	}
	_, addr := e.startProxy(b, proxy.Config{PoolMode: proxy.PoolTransaction, Logger: zap.NewNop()})
	through := dsn(addr, "alice.umbrella", tenantPassword)
	relayed := strings.Replace(e.cluster.DSN(db), e.cluster.Addr(), byteRelay(b, e.cluster.Addr()), 1)
	for _, bc := range []struct {
		name, mode, dsn string
		clients         int
	}{
		{"simple", "simple", through, 8}, {"prepared", "prepared", through, 8}, {"go-relay-floor/simple", "simple", relayed, 8},
		{"1-client/simple", "simple", through, 1}, {"1-client/go-relay-floor/simple", "simple", relayed, 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			perClient := max(b.N/bc.clients, 1)
			clients := strconv.Itoa(bc.clients)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			cpu := cpuMicros(b)
			b.ResetTimer()
			out := run(b, pgbench, "-n", "-S", "-M", bc.mode, "-c", clients, "-j", clients, "-t", strconv.Itoa(perClient), bc.dsn)
			b.StopTimer()
			cpu = cpuMicros(b) - cpu
			runtime.ReadMemStats(&after)
			reportLatency(b, out)
			b.ReportMetric(cpu/float64(perClient*bc.clients), "cpu-µs/query")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(perClient*bc.clients), "proxy-allocs/query")
		})
	}
}

// cpuMicros is this process's user and system CPU time so far, in µs.
func cpuMicros(b testing.TB) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e3
}

// byteRelay listens on a free port and copies bytes between each client
// and a connection to addr, a goroutine each way; it returns its address.
func byteRelay(b testing.TB, addr string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer s.Close()
				go func() {
					io.Copy(s, c)
					s.Close()
				}()
				io.Copy(c, s)
			}()
		}
	}()
	return ln.Addr().String()
}
