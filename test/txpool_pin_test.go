package test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// pinTenant is the database-tier tenant, whose rules allow DDL, LISTEN and
// advisory locks, so what the proxy does with them is transaction mode's.
const pinTenant = "umbrella"

// newPinEnv is a transaction-mode proxy whose tenants may hold conns
// server connections of a pool each, and the pinning tenant's database
// grants TEMP, which the database tier does not by default.
func newPinEnv(t *testing.T, conns int, cfg proxy.Config) *txEnv {
	t.Helper()
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: conns, MaxConnsPerTenant: conns}, cfg)
	db := e.objectName(t, pinTenant)
	if err := e.cluster.Exec(ctxT(t), db, "GRANT TEMPORARY ON DATABASE "+pgx.Identifier{db}.Sanitize()+" TO PUBLIC"); err != nil {
		t.Fatal(err)
	}
	return e
}

// pinItems leave session state in one transaction (set) that the next
// transaction of the same client uses (use, whose one row is 42).
var pinItems = []struct{ name, set, use string }{
	{"temporary table", "CREATE TEMP TABLE pinned_t AS SELECT 42 AS a", "SELECT a FROM pinned_t"},
	{"sql prepare", "PREPARE pinned_p AS SELECT 42", "EXECUTE pinned_p"},
	{"with hold cursor", "DECLARE pinned_c CURSOR WITH HOLD FOR SELECT 42", "FETCH pinned_c"},
	{"session advisory lock", "SELECT pg_advisory_lock(4242)", "SELECT CASE WHEN pg_advisory_unlock(4242) THEN 42 END"},
}

// TestTxPoolPinnedStateSurvivesTransactions: a client's transactions
// would hop server connections (another client takes the one it used
// while it waits), but session state pins it to its own.
func TestTxPoolPinnedStateSurvivesTransactions(t *testing.T) {
	e := newPinEnv(t, 2, proxy.Config{MaxPinnedPerTenant: -1})
	ctx := ctxT(t)
	url := dsn(e.addr, "alice."+pinTenant, tenantPassword)
	for _, it := range pinItems {
		for _, p := range protocols {
			t.Run(it.name+"/"+p.name, func(t *testing.T) {
				a, b := connect(t, url), connect(t, url)
				if _, err := a.Exec(ctx, it.set, p.mode); err != nil {
					t.Fatalf("%q: %v", it.set, err)
				}
				// b's transaction takes the connection a's transaction
				// gave back, unless a kept it.
				btx, err := b.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer btx.Rollback(ctx)
				if _, err := btx.Exec(ctx, "SELECT 1"); err != nil {
					t.Fatal(err)
				}
				var got int
				if err := a.QueryRow(ctx, it.use, p.mode).Scan(&got); err != nil || got != 42 {
					t.Fatalf("%q in the next transaction: %d, %v; want 42", it.use, got, err)
				}
				a.Close(ctx)
			})
		}
	}
}

// TestTxPoolListenerHearsNotificationsBetweenTransactions: after LISTEN,
// a notification sent by another client of the tenant reaches the
// listener while it sends nothing.
func TestTxPoolListenerHearsNotificationsBetweenTransactions(t *testing.T) {
	e := newPinEnv(t, 2, proxy.Config{MaxPinnedPerTenant: -1})
	ctx := ctxT(t)
	url := dsn(e.addr, "alice."+pinTenant, tenantPassword)
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			listener, sender := connect(t, url), connect(t, url)
			if _, err := listener.Exec(ctx, "LISTEN pinned_ch", p.mode); err != nil {
				t.Fatal(err)
			}
			for _, payload := range []string{"one", "two"} {
				if _, err := sender.Exec(ctx, "SELECT pg_notify('pinned_ch', $1)", p.mode, payload); err != nil {
					t.Fatal(err)
				}
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				n, err := listener.WaitForNotification(wctx)
				cancel()
				if err != nil || n.Channel != "pinned_ch" || n.Payload != payload {
					t.Fatalf("notification: %+v, %v; want %q on pinned_ch", n, err, payload)
				}
			}
			// The listener's own transactions go on as before.
			var got int
			if err := listener.QueryRow(ctx, "SELECT 42", p.mode).Scan(&got); err != nil || got != 42 {
				t.Fatalf("SELECT 42 after notifications: %d, %v", got, err)
			}
			listener.Close(ctx)
		})
	}
}

// TestTxPoolPinnedConnectionIsCleanedAtDisconnect: with one server
// connection, the next client gets the one a pinned client left, and
// finds none of its state: no temporary table, cursor, SQL prepared
// statement, listen or advisory lock.
func TestTxPoolPinnedConnectionIsCleanedAtDisconnect(t *testing.T) {
	e := newPinEnv(t, 1, proxy.Config{})
	ctx := ctxT(t)
	url := dsn(e.addr, "alice."+pinTenant, tenantPassword)
	admin, err := pgx.Connect(ctx, e.cluster.DSN(e.objectName(t, pinTenant)))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			a := connect(t, url)
			var pid uint32
			if err := a.QueryRow(ctx, "SELECT pg_backend_pid()", p.mode).Scan(&pid); err != nil {
				t.Fatal(err)
			}
			for _, it := range pinItems {
				if _, err := a.Exec(ctx, it.set, p.mode); err != nil {
					t.Fatalf("%q: %v", it.set, err)
				}
			}
			if _, err := a.Exec(ctx, "LISTEN pinned_ch", p.mode); err != nil {
				t.Fatal(err)
			}
			a.Close(ctx)

			next := connect(t, url)
			var nextPID uint32
			var traces string
			if err := next.QueryRow(ctx, "SELECT pg_backend_pid()", p.mode).Scan(&nextPID); err != nil {
				t.Fatal(err)
			}
			if err := next.QueryRow(ctx, sessionTraces, p.mode).Scan(&traces); err != nil {
				t.Fatal(err)
			}
			if nextPID != pid {
				t.Fatalf("the next client is on server process %d; want the pinned client's %d", nextPID, pid)
			}
			if traces != noTraces {
				t.Fatalf("the next client sees %q; want %q", traces, noTraces)
			}
			var locks int
			if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").Scan(&locks); err != nil || locks != 0 {
				t.Fatalf("advisory locks left: %d, %v; want none", locks, err)
			}
			next.Close(ctx)
		})
	}
}

// TestTxPoolPinCapFailsTheStatementNotTheSession: past the tenant's cap
// on pinned connections, the statement that would pin fails with 53400 as
// a server error would (an open transaction is aborted), and the session
// goes on.
func TestTxPoolPinCapFailsTheStatementNotTheSession(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newPinEnv(t, 4, proxy.Config{MaxPinnedPerTenant: 1, Registerer: reg})
	ctx := ctxT(t)
	url := dsn(e.addr, "alice."+pinTenant, tenantPassword)
	first := connect(t, url)
	if _, err := first.Exec(ctx, "LISTEN pinned_ch"); err != nil {
		t.Fatal(err)
	}
	assertPinnedGauge(t, reg, 1)
	second := connect(t, url)
	for _, p := range protocols {
		for _, sql := range []string{"LISTEN other_ch", "CREATE TEMP TABLE over_cap (a int)"} {
			if _, err := second.Exec(ctx, sql, p.mode); sqlstateOf(err) != "53400" {
				t.Fatalf("%s %q over the cap: %v; want 53400", p.name, sql, err)
			}
			tx, err := second.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, sql, p.mode); sqlstateOf(err) != "53400" {
				t.Fatalf("%s %q over the cap in a transaction: %v; want 53400", p.name, sql, err)
			}
			if _, err := tx.Exec(ctx, "SELECT 1", p.mode); sqlstateOf(err) != "25P02" {
				t.Fatalf("after the failed statement: %v; want 25P02 (transaction aborted)", err)
			}
			tx.Rollback(ctx)
			var got int
			if err := second.QueryRow(ctx, "SELECT 42", p.mode).Scan(&got); err != nil || got != 42 {
				t.Fatalf("the session after the refusal: %d, %v", got, err)
			}
		}
	}
	// The cap counts pinned connections, not clients: once the first
	// leaves, the second may pin.
	first.Close(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := second.Exec(ctx, "LISTEN other_ch")
		if err == nil {
			break
		}
		if sqlstateOf(err) != "53400" || time.Now().After(deadline) {
			t.Fatalf("LISTEN after the pinned client left: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	assertPinnedGauge(t, reg, 1)
}

// assertPinnedGauge fails unless tenantproxy_pinned_connections of
// pinTenant in reg is want.
func assertPinnedGauge(t *testing.T, reg *prometheus.Registry, want float64) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "tenantproxy_pinned_connections" {
			continue
		}
		for _, m := range f.GetMetric() {
			if l := m.GetLabel(); len(l) == 1 && l[0].GetValue() == pinTenant {
				if got := m.GetGauge().GetValue(); got != want {
					t.Fatalf("tenantproxy_pinned_connections{tenant=%q} = %v; want %v", pinTenant, got, want)
				}
				return
			}
		}
	}
	t.Fatalf("no tenantproxy_pinned_connections{tenant=%q}; want %v", pinTenant, want)
}

// TestTxPoolSQLDeallocate: DEALLOCATE of a client's SQL prepared statement
// works, and DEALLOCATE ALL drops the client's protocol-level statements
// too, as in PostgreSQL: the driver's next Bind of one gets 26000 (the
// proxy no longer prepares them again behind the client's back).
func TestTxPoolSQLDeallocate(t *testing.T) {
	e := newPinEnv(t, 1, proxy.Config{})
	ctx := ctxT(t)
	conn := connect(t, dsn(e.addr, "alice."+pinTenant, tenantPassword))
	simple := pgx.QueryExecModeSimpleProtocol
	if _, err := conn.Exec(ctx, "PREPARE pinned_p AS SELECT 42", simple); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "DEALLOCATE pinned_p", simple); err != nil {
		t.Fatalf("DEALLOCATE of the client's statement: %v", err)
	}
	if _, err := conn.Exec(ctx, "EXECUTE pinned_p", simple); sqlstateOf(err) != "26000" {
		t.Fatalf("EXECUTE after DEALLOCATE: %v; want 26000", err)
	}
	// pgx prepares this once (protocol level) and then only binds it.
	var got int
	if err := conn.QueryRow(ctx, "SELECT $1::int + 1", 41).Scan(&got); err != nil || got != 42 {
		t.Fatalf("protocol-level statement: %d, %v; want 42", got, err)
	}
	if _, err := conn.Exec(ctx, "DEALLOCATE ALL", simple); err != nil {
		t.Fatalf("DEALLOCATE ALL: %v", err)
	}
	if err := conn.QueryRow(ctx, "SELECT $1::int + 1", 41).Scan(&got); sqlstateOf(err) != "26000" {
		t.Fatalf("protocol-level statement after DEALLOCATE ALL: %d, %v; want 26000 as from PostgreSQL", got, err)
	}
}

// TestConsoleShowClientsLinksAPinnedClientToItsServer: SHOW CLIENTS gives
// a pinned client's server connection as link and remote_pid, and none
// for a client that holds nothing between transactions.
func TestConsoleShowClientsLinksAPinnedClientToItsServer(t *testing.T) {
	e := newConsoleEnv(t)
	ctx := ctxT(t)
	url := dsn(e.addr, "alice."+pinTenant, tenantPassword)
	pinned, unpinned := connect(t, url), connect(t, url)
	var pid uint32
	if _, err := pinned.Exec(ctx, "LISTEN pinned_ch"); err != nil {
		t.Fatal(err)
	}
	if err := pinned.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := unpinned.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	res := consoleExec(t, consoleConn(t, e.addr), "SHOW CLIENTS")
	links := map[string]int{}
	for i := range res.Rows {
		if column(t, res, i, "database") == pinTenant {
			links[column(t, res, i, "link")+"|"+column(t, res, i, "remote_pid")]++
		}
	}
	want := map[string]int{fmt.Sprintf("0x%x|%d", pid, pid): 1, "|0": 1}
	if !maps.Equal(links, want) {
		t.Fatalf("SHOW CLIENTS links of %s: %v; want %v", pinTenant, links, want)
	}
}

// TestTxPoolDrainEndsPinnedClientsBetweenTransactions: a drain ends a
// pinned client as soon as it is idle, as in session mode, and lets a
// pinned client's open transaction finish first; Shutdown does not wait
// for its timeout.
func TestTxPoolDrainEndsPinnedClientsBetweenTransactions(t *testing.T) {
	e := newPinEnv(t, 4, proxy.Config{})
	ctx := ctxT(t)
	srv, addr := e.startProxy(t, proxy.Config{PoolMode: proxy.PoolTransaction, DrainTimeout: time.Minute, MaxPinnedPerTenant: -1})
	url := dsn(addr, "alice."+pinTenant, tenantPassword)
	idle, busy := connect(t, url), connect(t, url)
	for _, c := range []*pgx.Conn{idle, busy} {
		if _, err := c.Exec(ctx, "LISTEN pinned_ch"); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	time.Sleep(200 * time.Millisecond)
	expectDrained(t, idle, tx, shut, 10*time.Second)
}

// TestTxPoolPinnedClientCopiesBothWays: a pinned binding is relayed in
// the background, and COPY goes through it both ways.
func TestTxPoolPinnedClientCopiesBothWays(t *testing.T) {
	e := newPinEnv(t, 2, proxy.Config{})
	ctx := ctxT(t)
	conn := connect(t, dsn(e.addr, "alice."+pinTenant, tenantPassword))
	if _, err := conn.Exec(ctx, "LISTEN pinned_ch"); err != nil {
		t.Fatal(err)
	}
	rows := [][]any{{"copied-1"}, {"copied-2"}, {"copied-3"}}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"users"}, []string{"username"}, pgx.CopyFromRows(rows))
	if err != nil || n != 3 {
		t.Fatalf("COPY FROM on a pinned connection: %d, %v", n, err)
	}
	var out bytes.Buffer
	tag, err := conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT username FROM users WHERE username LIKE 'copied-%' ORDER BY 1) TO STDOUT")
	if err != nil || tag.RowsAffected() != 3 || out.String() != "copied-1\ncopied-2\ncopied-3\n" {
		t.Fatalf("COPY TO on a pinned connection: %q, %v, %v", out.String(), tag, err)
	}
	var got int
	if err := conn.QueryRow(ctx, "SELECT 42").Scan(&got); err != nil || got != 42 {
		t.Fatalf("after COPY: %d, %v", got, err)
	}
}

// TestTxPoolPinnedClientIdleInTransactionTimeout: the idle-in-transaction
// limit holds for a pinned client, whose binding a relayer reads, as for
// any other: FATAL 25P03, and the transaction rolled back.
func TestTxPoolPinnedClientIdleInTransactionTimeout(t *testing.T) {
	e := newPinEnv(t, 2, proxy.Config{IdleInTransactionTimeout: 300 * time.Millisecond})
	ctx := ctxT(t)
	url := dsn(e.addr, "alice."+pinTenant, tenantPassword)
	conn := connect(t, url)
	if _, err := conn.Exec(ctx, "LISTEN pinned_ch"); err != nil {
		t.Fatal(err)
	}
	// Busy, not idle: a statement running past the limit is not cut.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO users (username) VALUES ('idle-pinned')"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_sleep(0.6)"); err != nil {
		t.Fatalf("a statement running past the limit: %v", err)
	}
	time.Sleep(time.Second)
	// Read what the proxy sent, without writing first: a statement sent
	// to a socket the proxy closed draws a reset, which may discard the
	// FATAL before the client reads it (as with PostgreSQL's own timeout).
	nc := conn.PgConn().Conn()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	sent, err := io.ReadAll(nc)
	if err != nil || !bytes.Contains(sent, []byte("SFATAL\x00")) || !bytes.Contains(sent, []byte("C25P03\x00")) {
		t.Fatalf("after 1 s idle in a pinned transaction: read %q, %v; want FATAL 25P03, then the connection closed", sent, err)
	}
	check := connect(t, url)
	var n int
	if err := check.QueryRow(ctx, "SELECT count(*) FROM users WHERE username = 'idle-pinned'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("rows of the timed-out transaction: %d, %v; want 0", n, err)
	}
}
