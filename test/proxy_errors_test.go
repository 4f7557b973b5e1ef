package test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap/zaptest"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// connectErr connects and returns the error, closing any connection made.
func connectErr(t *testing.T, connString string) error {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), connString)
	if err == nil {
		conn.Close(context.Background())
	}
	return err
}

// TestErrorTable produces every row of the error table (docs/design.md and
// the README) with a real client and asserts the SQLSTATE and severity.
func TestErrorTable(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	_, addr := e.startProxy(t, proxy.Config{})

	if _, _, err := e.cat.AddUser(ctx, "acme", "carol", "carol-password", "member"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: "hooli", Plan: catalog.PlanFree, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
		t.Fatal(err)
	}
	if err := e.cat.Suspend(ctx, "hooli"); err != nil {
		t.Fatal(err)
	}

	startupErrors := []struct {
		name, connString, sqlstate, message string
	}{
		{"no tenant in the connection", dsn(addr, "alice", tenantPassword), "28000", "no tenant"},
		{"sources disagree", dsn(addr, "alice.acme", tenantPassword, "options=-c%20tenant%3Dglobex"), "28000", "conflicting"},
		// Answered like a wrong password, so that strangers cannot list
		// tenants (TestLoginAgainstStrangers compares the bytes).
		{"tenant does not exist", dsn(addr, "alice.nosuch", tenantPassword), "28P01", "password authentication failed"},
		{"tenant suspended", dsn(addr, "alice.hooli", tenantPassword), "28000", "suspended"},
		{"wrong password", dsn(addr, "alice.acme", "wrong-password"), "28P01", "password authentication failed"},
		{"unknown user", dsn(addr, "mallory.acme", tenantPassword), "28P01", "password authentication failed"},
		{"user of another tenant", dsn(addr, "carol.globex", "carol-password"), "28P01", "password authentication failed"},
	}
	for _, tt := range startupErrors {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			// The catalog learns of the suspension through NOTIFY; give it
			// a moment.
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				err = connectErr(t, tt.connString)
				if sqlstateOf(err) == tt.sqlstate || time.Now().After(deadline) {
					break
				}
			}
			assertPgError(t, err, "FATAL", tt.sqlstate, tt.message)
		})
	}
	t.Run("same user of its own tenant logs in", func(t *testing.T) {
		connect(t, dsn(addr, "carol.acme", "carol-password"))
		connect(t, dsn(addr, "carol", "carol-password", "options=-c%20tenant%3Dacme"))
	})

	t.Run("statement refused by the tenant policy", func(t *testing.T) {
		for _, tt := range tierTenants {
			conn := connect(t, dsn(addr, "alice."+tt.sub, tenantPassword))
			for _, sql := range []string{"SET ROLE tenantproxy_serving", "RESET ROLE", "SET app.tenant_id = 'globex'", "SELECT set_config('app.tenant_id', 'globex', false)", "DISCARD ALL",
				"SELECT query_to_xml('SELECT set_config(''app.tenant_id'', ''globex'', false)', true, true, '')"} {
				_, err := conn.Exec(ctx, sql)
				assertPgError(t, err, "ERROR", "42501", "")
				// Extended protocol: a refused Parse fails the same way.
				_, err = conn.Exec(ctx, sql+" -- $1", pgx.QueryExecModeExec, "x")
				if sqlstateOf(err) != "42501" {
					t.Fatalf("%s: extended %q: %v; want 42501", tt.sub, sql, err)
				}
				var n int
				if err := conn.QueryRow(ctx, "SELECT count(*) FROM messages").Scan(&n); err != nil {
					t.Fatalf("%s: connection unusable after refusing %q: %v", tt.sub, sql, err)
				}
			}
			// Statements larger than the relay's buffer are inspected whole.
			long := "SELECT length('" + strings.Repeat("x", 100_000) + "')"
			var n int
			if err := conn.QueryRow(ctx, long, pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != 100_000 {
				t.Fatalf("%s: long simple query = %d, %v", tt.sub, n, err)
			}
			if err := conn.QueryRow(ctx, long+" + $1::int", 1).Scan(&n); err != nil || n != 100_001 {
				t.Fatalf("%s: long extended query = %d, %v", tt.sub, n, err)
			}
			_, err := conn.Exec(ctx, long+"; SET ROLE tenantproxy_serving", pgx.QueryExecModeSimpleProtocol)
			assertPgError(t, err, "ERROR", "42501", "")
			_, err = conn.Exec(ctx, long+" + $1::int; SET ROLE x", pgx.QueryExecModeExec, 1)
			if sqlstateOf(err) != "42501" {
				t.Fatalf("%s: long refused Parse: %v; want 42501", tt.sub, err)
			}
			// Inside a transaction, and in a pipeline with other
			// statements: the replies stay in order.
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, err = tx.Exec(ctx, "SET LOCAL ROLE tenantproxy_serving")
			assertPgError(t, err, "ERROR", "42501", "")
			tx.Rollback(ctx)
			results, err := conn.PgConn().Exec(ctx, "SELECT 1; SET ROLE x; SELECT 2").ReadAll()
			if sqlstateOf(err) != "42501" || len(results) != 0 {
				t.Fatalf("multi-statement query with a refused statement: %v, %d results", err, len(results))
			}
			var who string
			if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who == "tenantproxy_serving" && tt.tier == catalog.TierSchema {
				t.Fatalf("current_user after refusals = %q, %v", who, err)
			}
		}
	})

	t.Run("per-tenant connection cap", func(t *testing.T) {
		_, capped := e.startProxy(t, proxy.Config{MaxConnsPerTenant: 1})
		connect(t, dsn(capped, "alice.acme", tenantPassword))
		assertPgError(t, connectErr(t, dsn(capped, "alice.acme", tenantPassword)), "FATAL", "53300", "too many connections")
		connect(t, dsn(capped, "alice.globex", tenantPassword)) // other tenants are not affected
	})

	t.Run("failed logins slow guessing down but never lock the owner out", func(t *testing.T) {
		_, limited := e.startProxy(t, proxy.Config{MaxLoginFailures: 2, MaxLoginDelay: 300 * time.Millisecond})
		for range 4 {
			assertPgError(t, connectErr(t, dsn(limited, "alice.globex", "wrong-password")), "FATAL", "28P01", "password authentication failed")
		}
		connect(t, dsn(limited, "alice.globex", tenantPassword))
		connect(t, dsn(limited, "alice.acme", tenantPassword))
	})

	t.Run("pool wait timeout", func(t *testing.T) {
		one, err := pool.NewManager(pool.Config{MaxConnsPerKey: 1}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { one.Close() })
		_, addr := StartProxy(t, proxy.Config{StartupTimeout: time.Second}, e.cat, one)
		connect(t, dsn(addr, "alice.acme", tenantPassword))
		assertPgError(t, connectErr(t, dsn(addr, "alice.globex", tenantPassword)), "ERROR", "53400", "timed out waiting for a server connection")
	})

	t.Run("proxy shutting down", func(t *testing.T) {
		srv, addr := e.startProxy(t, proxy.Config{})
		conn := connect(t, dsn(addr, "alice.acme", tenantPassword))
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Fatal(err)
		}
		_, err := conn.Exec(ctx, "SELECT 1")
		assertPgError(t, err, "FATAL", "57P01", "shutting down")
	})
}

// assertPgError checks that err carries the server-style error wanted.
func assertPgError(t *testing.T, err error, severity, sqlstate, message string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("error %v; want %s %s", err, severity, sqlstate)
	}
	if pgErr.Code != sqlstate || pgErr.Severity != severity || !strings.Contains(pgErr.Message, message) {
		t.Fatalf("error %s %s %q; want %s %s containing %q", pgErr.Severity, pgErr.Code, pgErr.Message, severity, sqlstate, message)
	}
}
