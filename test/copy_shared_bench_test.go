package test

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// copyBenchRows is the rows of one COPY in BenchmarkSharedTierCopyFrom.
const copyBenchRows = 100_000

// BenchmarkSharedTierCopyFrom loads rows with pgx's CopyFrom (binary) into
// the chat schema's users table: directly, as the superuser, into a copy
// of the table without row-level security (same columns, defaults, keys
// and indexes), and through the proxy as a shared-tier tenant in each
// pool mode, where the proxy loads through a staging table
// (proxy/copyshared.go). Each op is one COPY: of copyBenchRows rows into
// an emptied table (the rate), or of 10 rows (the staging table's fixed
// cost per COPY); rows/s is the rate.
//
// Measured on the shared 2-CPU VM with other helpers' test suites running
// (2026-11-29), rows=100000, -benchtime 3x, six runs: direct 0.75-1.26 s
// per COPY; direct's time over the proxy's 0.70-0.99 in session mode
// (median 0.82), 0.61-1.08 in transaction mode (median 0.73). rows=10,
// -benchtime 300x -count 3, medians: direct 0.75 ms, session 7.1 ms,
// transaction 11.8 ms (the staging table's creation and drop).
func BenchmarkSharedTierCopyFrom(b *testing.B) {
	e := newProxyEnv(b)
	ctx := ctxT(b)
	tn, err := e.cat.Show(ctx, "acme")
	if err != nil {
		b.Fatal(err)
	}
	admin := connect(b, e.cluster.DSN(tn.Database))
	if _, err := admin.Exec(ctx, "CREATE TABLE users_direct (LIKE users INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"); err != nil {
		b.Fatal(err)
	}
	// The direct session names the tenant as the proxy would, so the
	// tenant column's default is the same expression in both.
	if _, err := admin.Exec(ctx, "SELECT set_config('app.tenant_id', $1, false)", tn.ID); err != nil {
		b.Fatal(err)
	}
	type target struct {
		name, table string
		conn        *pgx.Conn
	}
	targets := []target{{"direct", "users_direct", admin}}
	for _, mode := range poolModes {
		_, addr := e.startProxy(b, proxy.Config{PoolMode: mode, Logger: zap.NewNop()})
		targets = append(targets, target{"proxy_" + mode, "users", connect(b, dsn(addr, "alice.acme", tenantPassword))})
	}
	for _, rows := range []int{copyBenchRows, 10} {
		for _, tg := range targets {
			b.Run(fmt.Sprintf("rows=%d/%s", rows, tg.name), func(b *testing.B) {
				if _, err := admin.Exec(ctx, "TRUNCATE "+tg.table+" CASCADE"); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for i := range b.N {
					if rows == copyBenchRows && i > 0 {
						b.StopTimer()
						if _, err := admin.Exec(ctx, "TRUNCATE "+tg.table+" CASCADE"); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					base := int64(i * rows)
					n, err := tg.conn.CopyFrom(ctx, pgx.Identifier{tg.table}, []string{"id", "username", "display_name"},
						pgx.CopyFromSlice(rows, func(j int) ([]any, error) {
							return []any{base + int64(j) + 1, fmt.Sprintf("user-%d", base+int64(j)), "A user of the benchmark"}, nil
						}))
					if err != nil || n != int64(rows) {
						b.Fatalf("CopyFrom = %d, %v", n, err)
					}
				}
				b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			})
		}
	}
}
