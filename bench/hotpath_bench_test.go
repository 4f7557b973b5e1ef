package bench_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
	"github.com/tenantproxy/tenantproxy/router"
	"github.com/tenantproxy/tenantproxy/test"
)

func TestMain(m *testing.M) { pgtest.RunMain(m) }

// fixture is an in-process proxy in poolMode, with trust auth (the login is
// not what these benchmarks measure), in front of the harness's
// PostgreSQL, with one shared-tier tenant and the pgbench tables. poolMax
// bounds the server connections.
type fixture struct {
	cluster   *pgcluster.Cluster
	cat       *catalog.Catalog
	proxyAddr string
	// direct is the serving role's DSN on the shared-tier database;
	// tenant is tenant acme's through the proxy.
	direct, tenant string
}

func newFixture(b *testing.B, poolMax int, poolMode string) *fixture {
	b.Helper()
	ctx := context.Background()
	cluster := pgtest.Shared(b)
	catalogDSN := pgtest.NewDatabase(b, cluster)
	if _, err := migrations.Up(ctx, catalogDSN, migrations.Options{}); err != nil {
		b.Fatal(err)
	}
	cat, err := catalog.Open(ctx, catalogDSN, catalog.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cat.Close)
	c, err := cat.Create(ctx, catalog.CreateRequest{Subdomain: "acme", Plan: catalog.PlanFree, AdminUser: "alice", AdminPassword: "bench-password"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := cat.Update(ctx, "acme", catalog.UpdateRequest{Limits: catalog.NoLimits()}); err != nil {
		b.Fatal(err)
	}
	be, err := cat.Backend(ctx, c.Tenant.Backend)
	if err != nil {
		b.Fatal(err)
	}
	pgbench, err := pgcluster.Tool("pgbench")
	if err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command(pgbench, "-i", "-q", "-s", "1", cluster.DSN(be.SharedDatabase)).CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	if err := cluster.Exec(ctx, be.SharedDatabase, "GRANT SELECT, INSERT, UPDATE ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO "+router.QuoteIdent(be.ServingUser)); err != nil {
		b.Fatal(err)
	}

	mgr, err := pool.NewManager(pool.Config{MaxConnsPerKey: poolMax}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { mgr.Close() })
	_, addr := test.StartProxy(b, proxy.Config{AuthMethod: proxy.AuthTrust, PoolMode: poolMode, Logger: zap.NewNop()}, cat, mgr)
	return &fixture{
		cluster: cluster, cat: cat, proxyAddr: addr,
		direct: fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", be.ServingUser, be.ServingPassword, cluster.Addr(), be.SharedDatabase),
		tenant: fmt.Sprintf("postgres://alice.acme:bench-password@%s/%s?sslmode=disable", addr, be.SharedDatabase),
	}
}

// rawConn connects with pgconn and takes over the socket, so that the
// benchmark loop speaks the protocol from pre-encoded bytes and allocates
// nothing itself: what -benchmem reports through the proxy, beyond the
// direct figure, is the proxy's.
func rawConn(b *testing.B, dsn string) (net.Conn, *bufio.Reader) {
	b.Helper()
	ctx := context.Background()
	pc, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		hc.Conn.Write([]byte{'X', 0, 0, 0, 4})
		hc.Conn.Close()
	})
	return hc.Conn, bufio.NewReaderSize(hc.Conn, 32<<10)
}

// simpleQuery encodes a Query message.
func simpleQuery(sql string) []byte {
	m := []byte{'Q', 0, 0, 0, 0}
	m = append(m, sql...)
	m = append(m, 0)
	binary.BigEndian.PutUint32(m[1:], uint32(len(m)-1))
	return m
}

// roundTrip sends q and reads up to ReadyForQuery, without allocating.
func roundTrip(c net.Conn, r *bufio.Reader, q []byte) error {
	if _, err := c.Write(q); err != nil {
		return err
	}
	for {
		hdr, err := r.Peek(5)
		if err != nil {
			return err
		}
		typ, n := hdr[0], int(binary.BigEndian.Uint32(hdr[1:]))+1
		if typ == 'E' {
			return fmt.Errorf("server error in reply to %q", q[5:len(q)-1])
		}
		if _, err := r.Discard(n); err != nil {
			return err
		}
		if typ == 'Z' {
			return nil
		}
	}
}

// BenchmarkRelay is one simple-query round trip, directly and through the
// proxy's session relay: the difference is what the relay costs per
// query, and the proxy's allocations are its B/op and allocs/op (the
// client allocates nothing).
//
// go test -run '^$' -bench Relay -benchmem ./bench/ on the 2-core dev
// machine (PostgreSQL 15, Go 1.26, other engineers' tests running, load
// average 8–16, so times spread 2x between runs):
//
//	select1/direct    36–80 µs    0 B/op  0 allocs/op
//	select1/proxy     77–103 µs   0 B/op  0 allocs/op
//	1000rows/direct   0.5–1.8 ms  0 B/op  0 allocs/op
//	1000rows/proxy    0.2–1.9 ms  0 B/op  0 allocs/op
//
// The relay allocates nothing per message. Its cost is two more loopback
// hops per round trip: syscalls and goroutine wake-ups, not Go code (see
// the pprof figures of BenchmarkProxyPgbenchSelectOnly).
func BenchmarkRelay(b *testing.B) {
	f := newFixture(b, 20, proxy.PoolSession)
	for _, q := range []struct{ name, sql string }{
		{"select1", "SELECT 1"},
		{"1000rows", "SELECT repeat('x', 100) FROM generate_series(1, 1000)"},
	} {
		msg := simpleQuery(q.sql)
		for _, path := range []struct{ name, dsn string }{{"direct", f.direct}, {"proxy", f.tenant}} {
			b.Run(q.name+"/"+path.name, func(b *testing.B) {
				c, r := rawConn(b, path.dsn)
				b.ReportAllocs()
				for b.Loop() {
					if err := roundTrip(c, r, msg); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkTenantLookupCacheHit is the catalog look-up every connection
// makes, on a warm cache: no round trip to the control database. 0.5–1.7
// µs, 288 B/op, 1 allocs/op (the copy of the Tenant handed to the caller).
func BenchmarkTenantLookupCacheHit(b *testing.B) {
	f := newFixture(b, 20, proxy.PoolSession)
	ctx := context.Background()
	if _, err := f.cat.TenantBySubdomain(ctx, "acme"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.cat.TenantBySubdomain(ctx, "acme"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProxyPgbenchSelectOnly runs pgbench -S with 8 clients through
// the in-process proxy in each pool mode and protocol, b.N transactions in
// all. It exists to profile the proxy under the bench's main workload:
// pgbench and PostgreSQL are other processes, so the CPU profile of the
// test binary is the proxy's.
//
// go test -run '^$' -bench 'ProxyPgbenchSelectOnly/transaction/simple' -benchtime 300000x -cpuprofile cpu.out ./bench/
// go tool pprof -top bench.test cpu.out
func BenchmarkProxyPgbenchSelectOnly(b *testing.B) {
	pgbench, err := pgcluster.Tool("pgbench")
	if err != nil {
		b.Fatal(err)
	}
	const clients = 8
	for _, poolMode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		b.Run(poolMode, func(b *testing.B) {
			f := newFixture(b, 20, poolMode)
			for _, mode := range []string{"simple", "extended", "prepared"} {
				b.Run(mode, func(b *testing.B) {
					perClient := max(1, b.N/clients)
					b.ResetTimer()
					out, err := exec.Command(pgbench, "-n", "-S", "-M", mode, "-c", strconv.Itoa(clients), "-j", "2",
						"-t", strconv.Itoa(perClient), f.tenant).CombinedOutput()
					if err != nil {
						b.Fatalf("pgbench: %v\n%s", err, out)
					}
				})
			}
		})
	}
}

// BenchmarkIdleSessionMemory opens 200 client connections through the
// proxy, in each pool mode, and leaves them idle, then reports what each
// costs the proxy's process in heap and in goroutine stacks. In session
// mode that includes the server connection each client holds; the
// connection-scale scenario of `tenantproxy bench` reports the same as
// RSS of a separate process. Transaction mode, 2026-11-30, nproc=2:
// 8,192 stack-B/conn and 6.2-6.6 kB heap-B/conn (after one collection)
// with a goroutine per idle client; 0.2-3.1 kB stack-B/conn (the
// runtime's stack spans and caches: every client parked, 10 goroutines
// in all) and 4.2-4.6 kB heap-B/conn once idle clients park with one
// shared copy of each context's switch Queries and no read buffer.
func BenchmarkIdleSessionMemory(b *testing.B) {
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		b.Run(mode, func(b *testing.B) { idleSessionMemory(b, mode) })
	}
}

func idleSessionMemory(b *testing.B, mode string) {
	const n = 200
	f := newFixture(b, n, mode)
	ctx := context.Background()
	for b.Loop() {
		before := memInUse()
		conns := make([]net.Conn, n)
		for i := range conns {
			pc, err := pgconn.Connect(ctx, f.tenant)
			if err != nil {
				b.Fatal(err)
			}
			// Keep only the socket: pgconn's buffers are not the proxy's.
			hc, err := pc.Hijack()
			if err != nil {
				b.Fatal(err)
			}
			conns[i] = hc.Conn
		}
		// Idle transaction-mode clients park after 100 ms (proxy's
		// parkAfter): measured once they have.
		time.Sleep(300 * time.Millisecond)
		after := memInUse()
		for _, c := range conns {
			c.Write([]byte{'X', 0, 0, 0, 4})
			c.Close()
		}
		// Signed: parked clients' start-up goroutines are gone, and the
		// stacks they held may be fewer than before.
		b.ReportMetric(float64(int64(after.heap)-int64(before.heap))/n, "heap-B/conn")
		b.ReportMetric(float64(int64(after.stack)-int64(before.stack))/n, "stack-B/conn")
	}
}

type memUse struct{ heap, stack uint64 }

// memInUse is the process's live heap (after a collection) and goroutine
// stacks. The clients keep only their sockets, so nearly all of it is the
// proxy's.
func memInUse() memUse {
	// Twice: the first moves what sync.Pools hold to their victim
	// caches, the second frees it, as a running proxy's collections do.
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memUse{heap: m.HeapAlloc, stack: m.StackInuse}
}
