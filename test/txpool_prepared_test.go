package test

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestTxPoolPreparedStatementNamesBehaveAsInPostgreSQL: in transaction
// mode the proxy keeps a client's statement names itself (on servers they
// live under digests of their text), so it must answer a second Parse of
// a name as PostgreSQL does: 42P05, the first statement kept, and inside a
// transaction block the transaction failed. A Parse the server rejected
// leaves no name behind. One server connection, so every statement of
// every tenant shares it.
func TestTxPoolPreparedStatementNamesBehaveAsInPostgreSQL(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1, MaxConnsPerTenant: -1}, proxy.Config{})
	ctx := ctxT(t)
	for _, tenant := range []string{"acme", "initech", "umbrella"} {
		t.Run(tenant, func(t *testing.T) {
			c := connect(t, dsn(e.addr, "alice."+tenant, tenantPassword)).PgConn()
			prepare := func(name, sql string) error {
				_, err := c.Prepare(ctx, name, sql, nil)
				return err
			}
			value := func(name string) string {
				t.Helper()
				res := c.ExecPrepared(ctx, name, nil, nil, nil).Read()
				if res.Err != nil || len(res.Rows) != 1 {
					t.Fatalf("execute %s: %v", name, res.Err)
				}
				return string(res.Rows[0][0])
			}
			wantCode := func(err error, code string) {
				t.Helper()
				if sqlstateOf(err) != code {
					t.Fatalf("got %v; want SQLSTATE %s", err, code)
				}
			}

			if err := prepare("s", "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			err := prepare("s", "SELECT 2")
			wantCode(err, "42P05")
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Message != `prepared statement "s" already exists` {
				t.Errorf("message %q", pe.Message)
			}
			if got := value("s"); got != "1" {
				t.Errorf("after the refused Parse, s gives %s; want the first statement's 1", got)
			}

			// A Parse the server fails leaves no statement of that name.
			wantCode(prepare("bad", "SELEC 1"), "42601")
			if err := prepare("bad", "SELECT 3"); err != nil {
				t.Fatalf("Parse of a name whose first Parse failed: %v", err)
			}
			if got := value("bad"); got != "3" {
				t.Errorf("bad gives %s; want 3", got)
			}

			// Inside a transaction block the duplicate aborts it.
			if _, err := c.Exec(ctx, "BEGIN").ReadAll(); err != nil {
				t.Fatal(err)
			}
			wantCode(prepare("s", "SELECT 2"), "42P05")
			_, err = c.Exec(ctx, "SELECT 1").ReadAll()
			wantCode(err, "25P02")
			res, err := c.Exec(ctx, "COMMIT").ReadAll()
			if err != nil || res[0].CommandTag.String() != "ROLLBACK" {
				t.Errorf("COMMIT after the duplicate: %v %v; want ROLLBACK", res, err)
			}

			// Once closed, the name is free again.
			if err := c.Deallocate(ctx, "s"); err != nil {
				t.Fatal(err)
			}
			if err := prepare("s", "SELECT 2"); err != nil {
				t.Fatal(err)
			}
			if got := value("s"); got != "2" {
				t.Errorf("s after Close and Parse gives %s; want 2", got)
			}
		})
	}
}

// TestTxPoolSQLDeallocateOfProtocolStatementsBehavesAsInPostgreSQL: SQL
// DEALLOCATE reaches the statements a client prepared with Parse, whose
// names the proxy keeps itself (servers have them as tp_…): the name is
// dropped (executing it then gives 26000, and it can be prepared again
// with other text), an unknown name gives 26000, an aborted transaction
// 25P02 with the statement kept, and DEALLOCATE ALL drops them all. pgx's
// suite failed 5 tests with 26000 on its own statement's name before.
func TestTxPoolSQLDeallocateOfProtocolStatementsBehavesAsInPostgreSQL(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1, MaxConnsPerTenant: -1}, proxy.Config{})
	ctx := ctxT(t)
	for _, tenant := range []string{"acme", "initech", "umbrella"} {
		t.Run(tenant, func(t *testing.T) {
			c := connect(t, dsn(e.addr, "alice."+tenant, tenantPassword)).PgConn()
			step := func(sql, wantTag, wantCode string) {
				t.Helper()
				res, err := c.Exec(ctx, sql).ReadAll()
				var tag string
				if len(res) > 0 {
					tag = res[len(res)-1].CommandTag.String()
				}
				if sqlstateOf(err) != wantCode || (wantCode == "" && tag != wantTag) {
					t.Fatalf("%s: tag %q, %v; want tag %q, SQLSTATE %q", sql, tag, err, wantTag, wantCode)
				}
			}
			prepare := func(name, sql string) {
				t.Helper()
				if _, err := c.Prepare(ctx, name, sql, nil); err != nil {
					t.Fatalf("prepare %s: %v", name, err)
				}
			}
			executes := func(name, want string) {
				t.Helper()
				res := c.ExecPrepared(ctx, name, nil, nil, nil).Read()
				got := sqlstateOf(res.Err)
				if res.Err == nil {
					got = string(res.Rows[0][0])
				}
				if got != want {
					t.Fatalf("execute %s: %q; want %q", name, got, want)
				}
			}
			prepare("ps", "SELECT 1")
			step("DEALLOCATE ps", "DEALLOCATE", "")
			executes("ps", "26000")
			prepare("ps", "SELECT 2")
			executes("ps", "2")
			step(`deallocate prepare "ps"`, "DEALLOCATE", "")
			step("DEALLOCATE ps", "", "26000")
			step("DEALLOCATE nosuch", "", "26000")

			prepare("inblock", "SELECT 3")
			step("BEGIN", "BEGIN", "")
			step("DEALLOCATE inblock", "DEALLOCATE", "")
			step("COMMIT", "COMMIT", "")
			executes("inblock", "26000")

			prepare("kept", "SELECT 4")
			step("BEGIN", "BEGIN", "")
			step("SELECT 1/0", "", "22012")
			step("DEALLOCATE kept", "", "25P02")
			step("ROLLBACK", "ROLLBACK", "")
			executes("kept", "4")

			prepare("other", "SELECT 5")
			step("DEALLOCATE ALL", "DEALLOCATE ALL", "")
			executes("kept", "26000")
			executes("other", "26000")
		})
	}
}
