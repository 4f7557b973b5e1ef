package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
	"github.com/tenantproxy/tenantproxy/router"
)

// settingsView is what a transaction sees of its session's settings.
const settingsView = `SELECT current_setting('TimeZone') || '|' || current_setting('statement_timeout') || '|' ||
	current_setting('client_min_messages') || '|' || current_setting('application_name')`

// viewSettings runs settingsView in a transaction of its own and returns
// it with the server connection's pid.
func viewSettings(ctx context.Context, conn *pgx.Conn) (string, uint32, error) {
	var view string
	var pid uint32
	err := conn.QueryRow(ctx, settingsView+", pg_backend_pid()").Scan(&view, &pid)
	return view, pid, err
}

// reported is the ParameterStatus values a driver tracks.
func reported(conn *pgx.Conn) string {
	pc := conn.PgConn()
	return pc.ParameterStatus("TimeZone") + "|" + pc.ParameterStatus("application_name")
}

// TestTxPoolSessionSettingsFollowTheClientAndReachNoOneElse: Rails'
// connect sequence and later session SETs are accepted in transaction
// mode (they were refused with 42501), hold in every later transaction of
// the client whichever of the pool's two server connections it lands on,
// and the ParameterStatus values its driver tracks stay as set; the other
// clients of the pool, of the same tenant and of another, never see them.
func TestTxPoolSessionSettingsFollowTheClientAndReachNoOneElse(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 2, MaxConnsPerTenant: -1}, proxy.Config{})
	ctx := ctxT(t)
	sameTenant := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	otherTenant := connect(t, dsn(e.addr, "alice.globex", tenantPassword))
	defaults, _, err := viewSettings(ctx, sameTenant)
	if err != nil {
		t.Fatal(err)
	}
	defaultReport := reported(sameTenant)

	rails := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	for _, sql := range []string{
		"SET client_min_messages TO 'warning'; SET TIME ZONE 'UTC'",
		"SET standard_conforming_strings = on; SET intervalstyle = iso_8601",
		// Later SETs replace earlier ones of the same setting.
		"SET application_name = 'rails'; SET statement_timeout = '1234ms'",
		"SET TIME ZONE 'Asia/Kathmandu'",
	} {
		if _, err := rails.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	const want = "Asia/Kathmandu|1234ms|warning|rails"
	pids := map[uint32]bool{}
	for i := range 6 {
		// Both server connections held, the rails client's one among
		// them; then the other tenant's freed: the rails client's
		// transaction lands there.
		var held [2]pgx.Tx
		for j, holder := range []*pgx.Conn{otherTenant, sameTenant} {
			if held[j], err = holder.Begin(ctx); err == nil {
				_, err = held[j].Exec(ctx, "SELECT 1")
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := held[0].Commit(ctx); err != nil {
			t.Fatal(err)
		}
		got, pid, err := viewSettings(ctx, rails)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("round %d: the client's transaction sees %q; want %q", i, got, want)
		}
		pids[pid] = true
		if r := reported(rails); r != "Asia/Kathmandu|rails" {
			t.Fatalf("round %d: the client's driver was told %q; want Asia/Kathmandu|rails", i, r)
		}
		if err := held[1].Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for _, other := range []*pgx.Conn{sameTenant, otherTenant} {
			got, _, err := viewSettings(ctx, other)
			if err != nil {
				t.Fatal(err)
			}
			if got != defaults || reported(other) != defaultReport {
				t.Fatalf("round %d: another client sees %q, told %q; want %q, %q", i, got, reported(other), defaults, defaultReport)
			}
		}
	}
	if len(pids) != 2 {
		t.Fatalf("the client's transactions ran on %d server connections; want 2", len(pids))
	}
}

// TestTxPoolRolledBackSessionSettingsAreForgotten: as in PostgreSQL, a
// session SET whose transaction rolls back (ROLLBACK, an error in the
// same Query, an error before COMMIT) is gone, while one committed in a
// transaction block holds; on the pool's one server connection, the next
// client of another tenant never sees any of them.
func TestTxPoolRolledBackSessionSettingsAreForgotten(t *testing.T) {
	ctx := ctxT(t)
	_, conn, neighbour, defaults := settingsNeighbours(t)
	if _, err := conn.Exec(ctx, "SET statement_timeout = '1111ms'", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		sql, want, state string
	}{
		{"BEGIN; SET statement_timeout = '2222ms'; ROLLBACK", "1111ms", ""},
		{"SET statement_timeout = '3333ms'; SELECT 1/0", "1111ms", "22012"},
		{"BEGIN; SET statement_timeout = '4444ms'; SELECT 1/0", "1111ms", "22012"},
		{"ROLLBACK", "1111ms", ""},
		{"BEGIN; SET statement_timeout = '5555ms'", "5555ms", ""},
		{"COMMIT", "5555ms", ""},
		{"BEGIN; SET TIME ZONE 'Asia/Tokyo'; ROLLBACK", "5555ms", ""},
	} {
		_, err := conn.Exec(ctx, step.sql, pgx.QueryExecModeSimpleProtocol)
		if sqlstateOf(err) != step.state {
			t.Fatalf("%s: %v; want SQLSTATE %q", step.sql, err, step.state)
		}
		if conn.PgConn().TxStatus() != 'I' {
			continue
		}
		var got string
		if err := conn.QueryRow(ctx, "SHOW statement_timeout").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != step.want {
			t.Fatalf("after %s: statement_timeout %q; want %q", step.sql, got, step.want)
		}
		if got, _, err := viewSettings(ctx, neighbour); err != nil || got != defaults {
			t.Fatalf("after %s: the next client sees %q (%v); want %q", step.sql, got, err, defaults)
		}
	}
	// Pipelined in one write: the first Query's ReadyForQuery settles
	// nothing of the second's, whose SET fails with it.
	fe := conn.PgConn().Frontend()
	fe.Send(&pgproto3.Query{String: "SELECT 1"})
	fe.Send(&pgproto3.Query{String: "SET statement_timeout = '6666ms'; SELECT 1/0"})
	fe.Send(&pgproto3.Query{String: "SHOW statement_timeout"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var shown string
	for ready := 0; ready < 3; {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.ReadyForQuery:
			ready++
		case *pgproto3.DataRow:
			shown = string(m.Values[0])
		}
	}
	if shown != "5555ms" {
		t.Fatalf("after a pipelined failed SET: statement_timeout %q; want 5555ms", shown)
	}
	// Another tenant's transaction in between: the client's next one
	// gets its settings from the proxy's record, not the connection.
	if _, _, err := viewSettings(ctx, neighbour); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SHOW statement_timeout").Scan(&shown); err != nil || shown != "5555ms" {
		t.Fatalf("the transaction after: statement_timeout %q (%v); want 5555ms", shown, err)
	}
	// The server reported Asia/Tokyo inside the block and the old zone
	// after the ROLLBACK, as PostgreSQL does: nothing of it stayed.
	var zone string
	if err := conn.QueryRow(ctx, "SHOW TimeZone").Scan(&zone); err != nil {
		t.Fatal(err)
	}
	if r := conn.PgConn().ParameterStatus("TimeZone"); zone == "Asia/Tokyo" || r != zone {
		t.Fatalf("TimeZone is %q, reported %q after a rolled-back SET TIME ZONE", zone, r)
	}
}

// TestTxPoolSessionSettingsInTheUnnamedStatementAreTracked: drivers that
// send every statement through the unnamed statement (JDBC, psycopg 3)
// get their SETs tracked too, and forgotten when the batch fails; a SET
// in a named prepared statement, whose executions the proxy does not
// follow, is refused, and one run through a named portal leaves the
// connection to be neutralised. On the pool's one server connection
// no other client ever sees any of them.
func TestTxPoolSessionSettingsInTheUnnamedStatementAreTracked(t *testing.T) {
	ctx := ctxT(t)
	e, conn, neighbour, defaults := settingsNeighbours(t)
	pc := conn.PgConn()
	if err := pc.ExecParams(ctx, "SET statement_timeout = '2345ms'", nil, nil, nil, nil).Read().Err; err != nil {
		t.Fatal(err)
	}
	sameTenant := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	if _, err := sameTenant.Exec(ctx, "SET statement_timeout = '2345ms'"); err != nil {
		t.Fatal(err)
	}
	// Rolled back with the batch's failing statement.
	b := &pgconn.Batch{}
	b.ExecParams("SET statement_timeout = '9999ms'", nil, nil, nil, nil)
	b.ExecParams("SELECT 1/0", nil, nil, nil, nil)
	if _, err := pc.ExecBatch(ctx, b).ReadAll(); sqlstateOf(err) != "22012" {
		t.Fatalf("batch: %v; want 22012", err)
	}
	if _, err := pc.Prepare(ctx, "named_set", "SET work_mem = '2MB'", nil); sqlstateOf(err) != "42501" {
		t.Fatalf("SET in a named statement: %v; want 42501", err)
	}
	// Bound to a named portal, whose executions the proxy does not
	// follow: the client's next transaction is not promised the setting,
	// and no other client, of the same tenant either, may see it.
	fe := pc.Frontend()
	fe.Send(&pgproto3.Parse{Query: "SET statement_timeout = '7777ms'"})
	fe.Send(&pgproto3.Bind{DestinationPortal: "p"})
	fe.Send(&pgproto3.Execute{Portal: "p"})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("SET through a named portal: %s", e.Message)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	// A client whose context is the same, which gets the connection
	// without a set-up unless it is marked.
	var got string
	if err := sameTenant.QueryRow(ctx, "SHOW statement_timeout").Scan(&got); err != nil || got != "2345ms" {
		t.Fatalf("another client with the same settings sees statement_timeout %q (%v); want 2345ms", got, err)
	}
	for i := range 3 {
		var got string
		if err := conn.QueryRow(ctx, "SHOW statement_timeout").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != "2345ms" {
			t.Fatalf("transaction %d: statement_timeout %q; want 2345ms", i, got)
		}
		if got, _, err := viewSettings(ctx, neighbour); err != nil || got != defaults {
			t.Fatalf("the next client sees %q (%v); want %q", got, err, defaults)
		}
	}
}

// TestTxPoolFailedContextSetupRunsNoneOfTheClientsStatements: on the
// pool's one server connection, a schema-tier client whose tenant role
// the serving role can no longer take (revoked under a connected tenant)
// needs the switch from another tenant's context; its set-up fails, and
// the INSERT it sent behind the set-up, in the same write, must not run
// with the context half set (it ran as the serving role, into a table
// anyone may write, before the set-up was guarded). The client's session
// ends (08006) and the connection is closed.
func TestTxPoolFailedContextSetupRunsNoneOfTheClientsStatements(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	ctx := ctxT(t)
	if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: "wayne", Plan: catalog.PlanStandard, Tier: catalog.TierSchema,
		AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
		t.Fatal(err)
	}
	tn, err := e.cat.Show(ctx, "wayne")
	if err != nil {
		t.Fatal(err)
	}
	victim := connect(t, dsn(e.addr, "alice.wayne", tenantPassword))
	other := connect(t, dsn(e.addr, "alice.initech", tenantPassword))
	var pid uint32
	if err := other.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, e.cluster.DSN(tn.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, fmt.Sprintf(`CREATE TABLE public.leak (a int); GRANT INSERT ON public.leak TO PUBLIC;
		REVOKE %s FROM tenantproxy_serving`, router.QuoteIdent(tn.SchemaName))); err != nil {
		t.Fatal(err)
	}
	_, err = victim.Exec(ctx, "INSERT INTO public.leak VALUES (1)")
	if sqlstateOf(err) != "08006" {
		t.Fatalf("INSERT behind a failed set-up: %v; want 08006", err)
	}
	// The server ran whatever it had read before its backend ended.
	for gone := false; !gone; {
		if err := admin.QueryRow(ctx, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1", pid).Scan(&gone); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var rows int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM public.leak").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Fatalf("the INSERT behind the failed set-up ran: %d rows", rows)
	}
	var schema string
	if err := other.QueryRow(ctx, "SELECT current_user").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	if want := e.objectName(t, "initech"); schema != want {
		t.Fatalf("the other tenant's next transaction runs as %q; want %q", schema, want)
	}
}

// TestTxPoolTrackedSettingsAreCapped: a client's tracked settings are
// part of every set-up of its transactions' connections, so they are
// capped (64 names); setting a tracked name again stays allowed.
func TestTxPoolTrackedSettingsAreCapped(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	ctx := ctxT(t)
	conn := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	var sql strings.Builder
	for i := range 64 {
		fmt.Fprintf(&sql, "SET myapp.s%d = '%d';", i, i)
	}
	if _, err := conn.Exec(ctx, sql.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SET myapp.one_more = 'x'"); sqlstateOf(err) != "42501" {
		t.Fatalf("a 65th setting: %v; want 42501", err)
	}
	if _, err := conn.Exec(ctx, "SET myapp.s7 = 'again'"); err != nil {
		t.Fatalf("a tracked setting again: %v", err)
	}
	var got string
	if err := conn.QueryRow(ctx, "SELECT current_setting('myapp.s7') || current_setting('myapp.s63') || coalesce(current_setting('myapp.one_more', true), '-')").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "again63-" {
		t.Fatalf("settings %q; want again63- (one_more never sent)", got)
	}
}

// settingsNeighbours connects acme and globex through a transaction-mode
// proxy whose pools hold one server connection each, so that both take
// turns on one server session, and reads globex's default settings.
func settingsNeighbours(t *testing.T) (e *txEnv, conn, neighbour *pgx.Conn, defaults string) {
	t.Helper()
	e = newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	conn = connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	neighbour = connect(t, dsn(e.addr, "alice.globex", tenantPassword))
	defaults, _, err := viewSettings(ctxT(t), neighbour)
	if err != nil {
		t.Fatal(err)
	}
	return e, conn, neighbour, defaults
}
