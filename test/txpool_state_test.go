package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// sessionTraces is what a later holder of the server connection would see
// of state a transaction-mode client left behind.
const sessionTraces = `SELECT current_setting('statement_timeout') || '|' ||
	(SELECT count(*) FROM pg_cursors WHERE name <> '') || '|' ||
	(SELECT count(*) FROM pg_prepared_statements WHERE from_sql) || '|' ||
	(SELECT count(*) FROM pg_listening_channels()) || '|' ||
	(SELECT count(*) FROM pg_class WHERE relpersistence = 't')`

const noTraces = "0|0|0|0|0"

func TestTxPoolSessionStateIsRefusedAndNeverReachesTheNextTenant(t *testing.T) {
	// One server connection per pool: every client of a tier's database
	// takes turns on the same server session.
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	ctx := ctxT(t)
	items := []struct{ name, sql string }{
		{"set seed", "SET seed = 0.5"},
		{"set from current", "SET work_mem FROM CURRENT"},
		// A statement that is only a set_config is tracked, as SET is
		// (TestIsolationTransactionMode); one with more in it is not.
		{"set_config", "SELECT set_config('work_mem', '1MB', false), 1"},
	}
	// umbrella (database tier) may run DDL, advisory locks and LISTEN in
	// session mode, so its refusals here are transaction mode's own.
	for _, tenant := range []string{"acme", "initech", "umbrella"} {
		for _, it := range items {
			t.Run(tenant+"/"+it.name, func(t *testing.T) {
				for _, proto := range []string{"simple", "extended"} {
					conn := connect(t, dsn(e.addr, "alice."+tenant, tenantPassword))
					var err error
					if proto == "simple" {
						_, err = conn.Exec(ctx, it.sql, pgx.QueryExecModeSimpleProtocol)
					} else {
						_, err = conn.Exec(ctx, it.sql)
					}
					var pgErr *pgconn.PgError
					if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
						t.Fatalf("%s %q: got %v; want 42501", proto, it.sql, err)
					}
					if tenant == "umbrella" && !strings.Contains(pgErr.Message, "session mode") {
						t.Errorf("%s %q: message %q does not point to session mode", proto, it.sql, pgErr.Message)
					}
					// Inside a transaction too, and the transaction is
					// aborted like after any error.
					tx, err := conn.Begin(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := tx.Exec(ctx, it.sql); sqlstateOf(err) != "42501" {
						t.Fatalf("in a transaction %q: got %v; want 42501", it.sql, err)
					}
					tx.Rollback(ctx)
					conn.Close(ctx)
				}
				// The next client, of another tenant when the tier has
				// one, finds the server session clean.
				next := map[string]string{"acme": "globex", "initech": "initech", "umbrella": "umbrella"}[tenant]
				other := connect(t, dsn(e.addr, "alice."+next, tenantPassword))
				var traces string
				if err := other.QueryRow(ctx, sessionTraces).Scan(&traces); err != nil {
					t.Fatal(err)
				}
				if traces != noTraces {
					t.Fatalf("next client sees %q; want %q", traces, noTraces)
				}
			})
		}
	}
}

func TestTxPoolTransactionScopedStateIsAllowedAndEndsWithTheTransaction(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	ctx := ctxT(t)
	conn := connect(t, dsn(e.addr, "alice.umbrella", tenantPassword))
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		"SET LOCAL statement_timeout = '7s'",
		// The database tier's rules allow advisory locks (its databases
		// grant no TEMP, so ON COMMIT DROP tables are checked in
		// router's table test only).
		"SELECT pg_advisory_xact_lock(42)",
		"DECLARE c CURSOR FOR SELECT 1",
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%q: %v", sql, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var traces string
	if err := conn.QueryRow(ctx, sessionTraces).Scan(&traces); err != nil {
		t.Fatal(err)
	}
	if traces != noTraces {
		t.Fatalf("after commit: %q; want %q", traces, noTraces)
	}
}

func TestTxPoolClientLeavingMidTransactionIsRolledBack(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	e.seedUsers(t, "acme", "globex")
	ctx := ctxT(t)
	for _, tenant := range []string{"acme", "initech"} {
		leaver, err := pgx.Connect(ctx, dsn(e.addr, "alice."+tenant, tenantPassword))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaver.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		if _, err := leaver.Exec(ctx, "SET LOCAL statement_timeout = '7s'"); err != nil {
			t.Fatal(err)
		}
		if _, err := leaver.Exec(ctx, "INSERT INTO users (username) VALUES ('uncommitted')"); err != nil {
			t.Fatal(err)
		}
		// Gone without COMMIT or Terminate.
		leaver.PgConn().Conn().Close()

		next := connect(t, dsn(e.addr, "alice."+tenant, tenantPassword))
		var n int
		var timeout string
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := next.QueryRow(ctx, "SELECT count(*) FILTER (WHERE username = 'uncommitted'), current_setting('statement_timeout') FROM users").Scan(&n, &timeout)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 && timeout == "0" || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n != 0 || timeout != "0" {
			t.Fatalf("%s after a client left mid-transaction: %d uncommitted rows, statement_timeout %s; want 0 and 0", tenant, n, timeout)
		}
	}
}

func TestTxPoolPgbenchEveryProtocolMode(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 2}, proxy.Config{})
	e.unthrottled(t, "acme", "initech")
	e.seedUsers(t, "acme", "initech", "umbrella")
	pgbench := clientTool(t, "pgbench")
	script := filepath.Join(t.TempDir(), "chat.sql")
	// Parameters, a multi-statement transaction and single statements,
	// so that consecutive transactions land on different connections.
	// One pgbench thread per client: -M prepared prepares with a blocking
	// call, so with clients sharing a thread, one waiting for a server
	// connection would stall the clients in transactions that hold them.
	if err := os.WriteFile(script, []byte("\\set n random(1, 100)\nSELECT count(*) FROM users WHERE id > :n - 100;\nBEGIN;\nSELECT username FROM users WHERE id > :n - 1000 ORDER BY id LIMIT 5;\nCOMMIT;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tenant := range []string{"acme", "initech", "umbrella"} {
		for _, mode := range []string{"simple", "extended", "prepared"} {
			t.Run(mode+"/"+tenant, func(t *testing.T) {
				out := run(t, pgbench, "-n", "-M", mode, "-c", "8", "-j", "8", "-t", "100", "-f", script, dsn(e.addr, "alice."+tenant, tenantPassword))
				if !strings.Contains(out, "number of transactions actually processed: 800/800") {
					t.Fatalf("pgbench -M %s: %s", mode, out)
				}
			})
		}
	}
}

func TestTxPoolPreparedStatementsFollowClientsAcrossServerConnections(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 3}, proxy.Config{})
	e.seedUsers(t, "acme", "globex", "initech")
	ctx := ctxT(t)
	errs := make(chan error, 12)
	for i := range 12 {
		tenant := []string{"acme", "globex", "initech"}[i%3]
		conn := connect(t, dsn(e.addr, "alice."+tenant, tenantPassword))
		go func() {
			errs <- func() error {
				// The same statement name with a different text per client.
				if _, err := conn.Prepare(ctx, "mine", fmt.Sprintf("SELECT username, %d FROM users WHERE username = $1", i)); err != nil {
					return err
				}
				for j := range 60 {
					var name string
					var k int
					if err := conn.QueryRow(ctx, "mine", "u-"+tenant).Scan(&name, &k); err != nil {
						return fmt.Errorf("client %d, run %d: %w", i, j, err)
					}
					if name != "u-"+tenant || k != i {
						return fmt.Errorf("client %d of %s got (%s, %d)", i, tenant, name, k)
					}
					// pgx's statement cache: named statements per query text.
					if err := onlyOwnUsers(ctx, conn, tenant); err != nil {
						return err
					}
					if j == 30 {
						if err := conn.Deallocate(ctx, "mine"); err != nil {
							return err
						}
						if _, err := conn.Prepare(ctx, "mine", fmt.Sprintf("SELECT username, %d FROM users WHERE username = $1", i)); err != nil {
							return err
						}
					}
				}
				return nil
			}()
		}()
	}
	for range 12 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestTxPoolTenantCapAndWaitTimeout(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 2, MaxConnsPerTenant: 1, WaitTimeout: 300 * time.Millisecond}, proxy.Config{})
	ctx := ctxT(t)
	holder := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// acme holds its one connection: its next client waits, then 53400,
	// and keeps its session.
	second := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	start := time.Now()
	_, err = second.Exec(ctx, "SELECT 1")
	if sqlstateOf(err) != "53400" {
		t.Fatalf("second acme client: %v; want 53400", err)
	}
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Fatalf("53400 after %s; want the wait timeout first", waited)
	}
	// globex, in the same pool, is not held back by acme.
	other := connect(t, dsn(e.addr, "alice.globex", tenantPassword))
	if _, err := other.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("globex beside acme at its cap: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := second.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("second acme client after the first committed: %v", err)
	}
}

// retryCtx is a short context for a single statement.
func retryCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 10*time.Second)
}

func TestTxPoolCopyInAndOutThenNextTransactionsOnOtherConnections(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 2}, proxy.Config{})
	ctx := ctxT(t)
	// In the shared tier, where PostgreSQL has no COPY FROM under
	// row-level security, the proxy loads through a staging table.
	for _, tenant := range []string{"acme", "initech", "umbrella"} {
		conn := connect(t, dsn(e.addr, "alice."+tenant, tenantPassword))
		rows := [][]any{{"c-" + tenant + "-1"}, {"c-" + tenant + "-2"}}
		n, err := conn.CopyFrom(ctx, pgx.Identifier{"users"}, []string{"username"}, pgx.CopyFromRows(rows))
		if err != nil || n != 2 {
			t.Fatalf("%s: COPY FROM: %d rows, %v", tenant, n, err)
		}
		var out strings.Builder
		if _, err := conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT username FROM users ORDER BY username) TO STDOUT"); err != nil {
			t.Fatalf("%s: COPY TO: %v", tenant, err)
		}
		if want := "c-" + tenant + "-1\nc-" + tenant + "-2\n"; out.String() != want {
			t.Fatalf("%s: COPY TO gave %q; want %q", tenant, out.String(), want)
		}
		// A COPY the server fails while the client still streams: the
		// error reaches the client, the rows do not stay.
		dup := make([][]any, 5000)
		for i := range dup {
			dup[i] = []any{fmt.Sprintf("d-%s-%d", tenant, i%4000)}
		}
		if _, err := conn.CopyFrom(ctx, pgx.Identifier{"users"}, []string{"username"}, pgx.CopyFromRows(dup)); sqlstateOf(err) != "23505" {
			t.Fatalf("%s: COPY FROM with duplicates: %v; want 23505", tenant, err)
		}
		// The session goes on in transaction mode after COPY.
		for range 5 {
			var k int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&k); err != nil || k != 2 {
				t.Fatalf("%s after COPY: %d rows, %v", tenant, k, err)
			}
		}
	}
}

func TestTxPoolCancelReachesTheTransactionsServerConnection(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 2}, proxy.Config{})
	conn := connect(t, dsn(e.addr, "alice.initech", tenantPassword))
	ctx, cancel := context.WithTimeout(ctxT(t), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := conn.Exec(ctx, "SELECT pg_sleep(30)")
	if err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("pg_sleep(30) with a 500 ms context: %v after %s; want it cancelled", err, time.Since(start))
	}
	// The server stopped sleeping: PostgreSQL does not notice a closed
	// client socket during pg_sleep, so only the cancel ends it early.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var running int
		if err := connect(t, e.cluster.DSN("postgres")).QueryRow(ctxT(t),
			"SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'").Scan(&running); err != nil {
			t.Fatal(err)
		}
		if running == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pg_sleep(30) still running 10 s after the cancel")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A new session finds a working pool.
	again := connect(t, dsn(e.addr, "alice.initech", tenantPassword))
	if _, err := again.Exec(ctxT(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

// TestTxPoolSelfTerminationEndsOnlyTheClientsSession: in transaction mode
// SELECT pg_terminate_backend(pg_backend_pid()) gets what PostgreSQL gives
// (FATAL 57P01, the connection closed), as a simple Query, through the
// extended protocol and inside a transaction, whose work is rolled back;
// the pool's one server connection, which another client uses before and
// after, lives on (same backend pid). It was refused with 42501 before
// (pgx's TestBeginTxFatalErrorKillsConn, TestConnDestroyedWhenBeginFailsFatally).
// The database tier's tenant: the rules allow the call only there.
func TestTxPoolSelfTerminationEndsOnlyTheClientsSession(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	ctx := ctxT(t)
	other := connect(t, dsn(e.addr, "alice.umbrella", tenantPassword))
	backend := func() uint32 {
		t.Helper()
		var pid uint32
		if err := other.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	pid := backend()
	const terminate = "SELECT pg_terminate_backend(pg_backend_pid())"
	for _, how := range []string{"simple", "extended", "in a transaction"} {
		t.Run(how, func(t *testing.T) {
			conn := connect(t, dsn(e.addr, "alice.umbrella", tenantPassword))
			var err error
			switch how {
			case "simple":
				_, err = conn.Exec(ctx, terminate, pgx.QueryExecModeSimpleProtocol)
			case "extended":
				_, err = conn.Exec(ctx, terminate)
			default:
				if _, err := conn.Exec(ctx, "BEGIN; INSERT INTO users (username) VALUES ('terminated')"); err != nil {
					t.Fatal(err)
				}
				_, err = conn.Exec(ctx, terminate)
			}
			assertPgError(t, err, "FATAL", "57P01", "terminating connection due to administrator command")
			if _, err := conn.Exec(ctx, "SELECT 1"); err == nil || !conn.IsClosed() {
				t.Fatalf("after its FATAL the connection runs SELECT 1 (%v); want it closed", err)
			}
			var n int
			if err := other.QueryRow(ctx, "SELECT count(*) FROM users WHERE username = 'terminated'").Scan(&n); err != nil || n != 0 {
				t.Fatalf("the terminated session's rows: %d (%v); want its transaction rolled back", n, err)
			}
			if got := backend(); got != pid {
				t.Fatalf("the pool's server connection is backend %d now, was %d; want it kept", got, pid)
			}
		})
	}
}
