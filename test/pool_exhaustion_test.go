package test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// defaultMaxConnsPerKey is pool.Config.MaxConnsPerKey's default.
const defaultMaxConnsPerKey = 20

// TestDefaultsKeepATenantFromExhaustingThePool: with every setting at its
// default, acme (shared tier) tries to hold as many server connections
// as the pool has, as sessions in session mode or as open transactions in
// transaction mode; globex, on the same pool, still logs in and runs a
// query within seconds. Before the per-tenant share was on by default,
// acme took all 20 and globex's login waited behind them.
func TestDefaultsKeepATenantFromExhaustingThePool(t *testing.T) {
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(mode, func(t *testing.T) {
			e := newProxyEnvWith(t, pgcluster.Options{}, pool.Config{})
			_, addr := e.startProxy(t, proxy.Config{PoolMode: mode})
			holding := holdConnections(t, addr, "alice.acme", defaultMaxConnsPerKey)
			// acme holds what it can: its share, or (before) everything.
			// In transaction mode its plan's server_connections is lower.
			share := defaultMaxConnsPerKey / 2
			if mode == proxy.PoolTransaction {
				acme, err := e.cat.Show(ctxT(t), "acme")
				if err != nil {
					t.Fatal(err)
				}
				share = min(share, acme.Limits.ServerConnections)
			}
			deadline := time.After(20 * time.Second)
			for held := 0; held < share; held++ {
				select {
				case <-holding:
				case <-deadline:
					t.Fatalf("acme holds only %d connections after 20s", held)
				}
			}
			time.Sleep(500 * time.Millisecond) // let acme take more if it may

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			conn, err := pgx.Connect(ctx, dsn(addr, "alice.globex", tenantPassword))
			if err != nil {
				t.Fatalf("globex login beside acme's %d clients: %v (after %s); want it in", defaultMaxConnsPerKey, err, time.Since(start))
			}
			defer conn.Close(context.Background())
			var one int
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				t.Fatalf("globex query beside acme's clients: %v (after %s)", err, time.Since(start))
			}
		})
	}
}

// holdConnections connects n clients as user, each holding its server
// connection with an open transaction (which in session mode the session
// holds anyway), and reports each one that got in on the returned
// channel. Clients the pool makes wait give up with the wait timeout.
// Every client is closed when the test ends, before the proxy is.
func holdConnections(t *testing.T, addr, user string, n int) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan struct{}, n)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			defer ccancel()
			conn, err := pgx.Connect(cctx, dsn(addr, user, tenantPassword))
			if err != nil {
				return
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(cctx, "BEGIN; SELECT 1"); err != nil {
				return
			}
			held <- struct{}{}
			<-ctx.Done()
		}()
	}
	return held
}

// TestTxPoolIdleInTransactionTimeout: a transaction-mode client that
// leaves its transaction open and idle past the limit gets FATAL 25P03,
// its work is rolled back, and its server connection goes to the client
// waiting for it (the pool has one).
func TestTxPoolIdleInTransactionTimeout(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1},
		proxy.Config{IdleInTransactionTimeout: 500 * time.Millisecond})
	ctx := ctxT(t)
	idle := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	// The tenant's SET of the server's limit is tracked like any other
	// (pg_dump sends it): the proxy times the transaction whatever it says.
	if _, err := idle.Exec(ctx, "SET idle_in_transaction_session_timeout = 0"); err != nil {
		t.Fatalf("SET idle_in_transaction_session_timeout = 0: %v; want it tracked", err)
	}
	if _, err := idle.Exec(ctx, "BEGIN; INSERT INTO users (username) VALUES ('idle-in-tx')"); err != nil {
		t.Fatal(err)
	}
	// The pool's one connection is held: this login waits for it.
	start := time.Now()
	waiting := connect(t, dsn(e.addr, "alice.acme", tenantPassword))
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("the waiting client got the connection after %s; want about 500ms", waited)
	}
	var n int
	if err := waiting.QueryRow(ctx, "SELECT count(*) FROM users WHERE username = 'idle-in-tx'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("rows of the idle transaction: %d, %v; want 0 (rolled back)", n, err)
	}
	_, err := idle.Exec(ctx, "SELECT 1")
	if sqlstateOf(err) != "25P03" {
		t.Fatalf("idle client's next statement: %v; want 25P03", err)
	}
}

// TestSessionIdleInTransactionTimeout: in session mode PostgreSQL times
// idle transactions, with the proxy's limit, which the tenant cannot lift:
// its SET of the setting (pg_dump and pg_restore send one) is held to the
// limit (policy.CatalogViews), a lower value is kept, and every other way
// of changing it is refused.
func TestSessionIdleInTransactionTimeout(t *testing.T) {
	e := newProxyEnv(t)
	_, addr := e.startProxy(t, proxy.Config{IdleInTransactionTimeout: 500 * time.Millisecond})
	ctx := ctxT(t)
	conn := connect(t, dsn(addr, "alice.acme", tenantPassword))
	for _, tt := range []struct{ set, want string }{
		{"SET idle_in_transaction_session_timeout = 0", "500ms"},
		{"SET idle_in_transaction_session_timeout = '1h'", "500ms"},
		{"SET idle_in_transaction_session_timeout = 200", "200ms"},
		{"SET idle_in_transaction_session_timeout = 0", "500ms"},
	} {
		var got string
		if _, err := conn.Exec(ctx, tt.set); err != nil {
			t.Fatalf("%s: %v; want it held to the limit", tt.set, err)
		}
		if err := conn.QueryRow(ctx, "SHOW idle_in_transaction_session_timeout").Scan(&got); err != nil || got != tt.want {
			t.Fatalf("after %s: %q, %v; want %s", tt.set, got, err, tt.want)
		}
	}
	for _, sql := range []string{"RESET idle_in_transaction_session_timeout", "SET idle_in_transaction_session_timeout TO DEFAULT", "SELECT set_config('idle_in_transaction_session_timeout', '0', false)"} {
		if _, err := conn.Exec(ctx, sql); sqlstateOf(err) != "42501" {
			t.Fatalf("%s: %v; want 42501", sql, err)
		}
	}
	if _, err := pgx.Connect(ctx, dsn(addr, "alice.acme", tenantPassword, "options=-c%20idle_in_transaction_session_timeout%3D0")); err == nil {
		t.Fatal("idle_in_transaction_session_timeout=0 in the startup options was accepted")
	}
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := conn.Exec(ctx, "SELECT 1"); sqlstateOf(err) != "25P03" {
		t.Fatalf("statement after an idle transaction: %v; want 25P03", err)
	}
}
