package test

import (
	"encoding/binary"
	"io"
	"net"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

var pgbenchLatency = regexp.MustCompile(`latency average = ([0-9.]+) ms`)

// reportLatency reports pgbench's average latency in out as ms/query.
func reportLatency(b *testing.B, out string) {
	b.Helper()
	m := pgbenchLatency.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("no latency in pgbench output:\n%s", out)
	}
	ms, _ := strconv.ParseFloat(m[1], 64)
	b.ReportMetric(ms, "ms/query")
}

// BenchmarkSelectOnly runs pgbench -S (simple protocol, one client, b.N
// transactions) against the database-tier tenant's database, directly as
// the superuser and through the proxy, in the same run, so their
// latencies can be compared. ms/query is pgbench's latency average;
// proxy-allocs/query counts every allocation in this process (the proxy,
// the pool, the catalog) during the run, divided by the queries.
//
// Measured on a shared 2-CPU VM, PostgreSQL 15 on loopback, other test
// suites running (go test -bench SelectOnly -benchtime 30000x -count 5,
// medians): direct 0.090 ms/query, proxy 0.133 ms/query, so 1.48x or
// +0.043 ms per simple query. A later run with the pg_query statement
// policy in place: direct 0.065, proxy 0.132 (2.0x, +0.067 ms), the VM
// busier. proxy-allocs/query stays at 0.015, i.e. ~440 allocations per
// run, all of them connection setup: none per message.
func BenchmarkSelectOnly(b *testing.B) {
	e := newProxyEnv(b)
	ctx := ctxT(b)
	db := e.objectName(b, "umbrella")
	pgbench := clientTool(b, "pgbench")
	direct := e.cluster.DSN(db)
	run(b, pgbench, "-i", "-q", "-s", "1", direct)
	// The tenant's login role, named like its database, is whom the
	// proxy logs in as.
	if err := e.cluster.Exec(ctx, db, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO "+db); err != nil {
		b.Fatal(err)
	}
	_, addr := e.startProxy(b, proxy.Config{Logger: zap.NewNop()})
	through := dsn(addr, "alice.umbrella", tenantPassword)

	for _, bc := range []struct{ name, dsn string }{{"direct", direct}, {"proxy", through}} {
		b.Run(bc.name, func(b *testing.B) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			out := run(b, pgbench, "-n", "-S", "-M", "simple", "-c", "1", "-t", strconv.Itoa(b.N), bc.dsn)
			b.StopTimer()
			runtime.ReadMemStats(&after)
			reportLatency(b, out)
			if bc.name == "proxy" {
				b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N), "proxy-allocs/query")
			}
		})
	}
}

// BenchmarkIdleClientMemory opens 1000 idle sessions through the proxy
// (each holding its server connection, as session mode does) and reports
// the proxy's Go memory per session: heap and goroutine stacks in use,
// after GC, over the count. The clients are raw sockets that keep no
// buffers, so the figure is the proxy's (and the pool's) own.
//
// Measured (go test -bench IdleClientMemory -benchtime 1x): 44 KiB per
// idle session (heap+stacks 2.4 MiB -> 45.7 MiB for 1000, 2007
// goroutines): two 8 KiB relay buffers, two goroutine stacks, and the
// pool's server connection state.
func BenchmarkIdleClientMemory(b *testing.B) {
	idleClientMemory(b, nil)
}

// BenchmarkIdleClientMemoryAfterLongStatement is BenchmarkIdleClientMemory
// with every client sending one 200 KiB statement before it goes idle:
// what an idle client holds must not depend on what it sent before.
//
// Measured (go test -bench IdleClientMemory -benchtime 1x, the two
// benchmarks in one run on the shared 2-core box): 41.5 KiB per idle
// session after the statement, 46.3 KiB without; before the Scanner gave
// long buffers back, 251.7 KiB after it (each session kept its
// statement's buffer) and 46.2 KiB without.
func BenchmarkIdleClientMemoryAfterLongStatement(b *testing.B) {
	idleClientMemory(b, simpleQuery("SELECT length('"+strings.Repeat("x", 200<<10)+"')"))
}

// idleClientMemory opens 1000 sessions, each sending statement (when not
// nil) before going idle, and reports the proxy's memory per session.
func idleClientMemory(b *testing.B, statement []byte) {
	const clients = 1000
	e := newProxyEnvWith(b, pgcluster.Options{Conf: map[string]string{"max_connections": strconv.Itoa(clients + 100)}},
		pool.Config{MaxConnsPerKey: clients + 10})
	_, addr := e.startProxy(b, proxy.Config{AuthMethod: proxy.AuthTrust, Logger: zap.NewNop()})
	startup, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "alice.umbrella", "database": "app"}}).Encode(nil)
	if err != nil {
		b.Fatal(err)
	}
	hdr := make([]byte, 5)
	body := make([]byte, 1024)
	// Read up to ReadyForQuery without keeping anything.
	ready := func(c net.Conn) {
		for {
			if _, err := io.ReadFull(c, hdr); err != nil {
				b.Fatal(err)
			}
			n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
			if n > len(body) {
				b.Fatalf("unexpected %d-byte message %q", n, hdr[0])
			}
			if _, err := io.ReadFull(c, body[:n]); err != nil {
				b.Fatal(err)
			}
			if hdr[0] == 'E' {
				b.Fatalf("error from the proxy: %q", body[:n])
			}
			if hdr[0] == 'Z' {
				return
			}
		}
	}
	for b.Loop() {
		conns := make([]net.Conn, 0, clients)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range clients {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
			if _, err := c.Write(startup); err != nil {
				b.Fatal(err)
			}
			ready(c)
			if statement != nil {
				if _, err := c.Write(statement); err != nil {
					b.Fatal(err)
				}
				ready(c)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		used := func(m *runtime.MemStats) float64 { return float64(m.HeapInuse + m.StackInuse) }
		b.ReportMetric((used(&after)-used(&before))/clients/1024, "KiB/idle-session")
		b.Logf("%d idle sessions: heap+stacks %.1f MiB -> %.1f MiB, goroutines %d", clients, used(&before)/(1<<20), used(&after)/(1<<20), runtime.NumGoroutine())
		for _, c := range conns {
			c.Write([]byte{'X', 0, 0, 0, 4})
			c.Close()
		}
	}
}
