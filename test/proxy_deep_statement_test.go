package test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// deepStatements are 30,000 levels deep. Before the bound, libpg_query's
// C code recursed over the trees of the first two until the thread's
// stack (8 MiB) ran out, about 23,700 levels down (SIGSEGV: the test
// binary, with the proxy in it, died); the grammar's own stack stopped
// the sub-selects first, with a syntax error. pg_typeof keeps them off
// the policy's lexical fast path, so they reach the parser.
var deepStatements = map[string]string{
	"additions":   "SELECT pg_typeof(1" + strings.Repeat("+1", 30000) + ")",
	"JOINs":       "SELECT pg_typeof(1) FROM t" + strings.Repeat(" JOIN t ON true", 30000),
	"sub-selects": "SELECT pg_typeof(" + strings.Repeat("(SELECT ", 30000) + "1" + strings.Repeat(")", 30000) + ")",
}

// TestDeepStatementIsRefusedAndNothingElseNotices: a statement nested
// 30,000 deep gets ERROR 54001 "stack depth limit exceeded", as
// PostgreSQL answers a statement too deep for its stack, in both pool
// modes and through the simple and the extended protocol (unnamed and
// named statements); the connection goes on, and the proxy serves
// another tenant's client.
func TestDeepStatementIsRefusedAndNothingElseNotices(t *testing.T) {
	e := newProxyEnv(t)
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement}
	for _, poolMode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(poolMode, func(t *testing.T) {
			_, addr := e.startProxy(t, proxy.Config{PoolMode: poolMode})
			ctx := ctxT(t)
			conn := connect(t, dsn(addr, "alice.acme", tenantPassword))
			for name, sql := range deepStatements {
				for _, m := range modes {
					_, err := conn.Exec(ctx, sql, m)
					var pgErr *pgconn.PgError
					if !errors.As(err, &pgErr) || pgErr.Code != "54001" || pgErr.Severity != "ERROR" ||
						!strings.HasPrefix(pgErr.Message, "stack depth limit exceeded") {
						t.Errorf("%s, %v: %v; want ERROR 54001 stack depth limit exceeded", name, m, err)
					}
					var tenant string
					if err := conn.QueryRow(ctx, "SELECT current_setting('app.tenant_id')", m).Scan(&tenant); err != nil || tenant == "" {
						t.Fatalf("%s, %v: the connection after the refusal: %q, %v", name, m, tenant, err)
					}
				}
			}
			other := connect(t, dsn(addr, "alice.globex", tenantPassword))
			var n int
			if err := other.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil || n != 1 {
				t.Fatalf("another client after the deep statements: %d, %v", n, err)
			}
		})
	}
}
