package test

import (
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// limitsEnv is a proxy per pool mode over one catalog, and the tenants'
// limits set through the catalog as `tenant update --limit` sets them.
type limitsEnv struct {
	*proxyEnv
	addrs map[string]string
}

func newLimitsEnv(t *testing.T) *limitsEnv {
	e := newProxyEnvWith(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 20, WaitTimeout: 300 * time.Millisecond})
	le := &limitsEnv{proxyEnv: e, addrs: map[string]string{}}
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		_, le.addrs[mode] = e.startProxy(t, proxy.Config{PoolMode: mode})
	}
	return le
}

// limit sets (v non-nil) or drops tenant sub's own limit.
func (e *limitsEnv) limit(t *testing.T, sub, name string, v *float64) {
	t.Helper()
	if _, err := e.cat.Update(ctxT(t), sub, catalog.UpdateRequest{Limits: map[string]*float64{name: v}}); err != nil {
		t.Fatal(err)
	}
}

func val(v float64) *float64 { return &v }

func (e *limitsEnv) connect(t *testing.T, mode string, sub string) *pgx.Conn {
	t.Helper()
	return connect(t, dsn(e.addrs[mode], "alice."+sub, tenantPassword))
}

// TestLimitClientConnections: past its client_connections a tenant's
// next login gets FATAL 53300; another tenant of the same plan connects.
func TestLimitClientConnections(t *testing.T) {
	e := newLimitsEnv(t)
	e.limit(t, "acme", catalog.LimitClientConnections, val(2))
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(mode, func(t *testing.T) {
			ctx := ctxT(t)
			a1, a2 := e.connect(t, mode, "acme"), e.connect(t, mode, "acme")
			_, err := pgx.Connect(ctx, dsn(e.addrs[mode], "alice.acme", tenantPassword))
			if sqlstateOf(err) != "53300" {
				t.Fatalf("acme's third client: %v; want 53300", err)
			}
			for range 3 {
				e.connect(t, mode, "globex")
			}
			a1.Close(ctx)
			a2.Close(ctx)
		})
	}
}

// TestLimitServerConnections: a tenant holding its server_connections
// waits for a server connection (here 0.3 s, then 53400) while another
// tenant on the same pool is served; raising the limit reaches the
// sessions already open within about a second.
func TestLimitServerConnections(t *testing.T) {
	e := newLimitsEnv(t)
	e.limit(t, "acme", catalog.LimitServerConnections, val(1))
	ctx := ctxT(t)
	holder, waiter := e.connect(t, proxy.PoolTransaction, "acme"), e.connect(t, proxy.PoolTransaction, "acme")
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := waiter.Exec(ctx, "SELECT 1"); sqlstateOf(err) != "53400" {
		t.Fatalf("acme's second transaction at its limit of 1: %v; want 53400", err)
	}
	other := e.connect(t, proxy.PoolTransaction, "globex")
	if _, err := other.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("globex beside acme at its limit: %v", err)
	}
	e.limit(t, "acme", catalog.LimitServerConnections, val(2))
	deadline := time.Now().Add(3 * time.Second)
	for {
		_, err := waiter.Exec(ctx, "SELECT 1")
		if err == nil {
			break
		}
		if sqlstateOf(err) != "53400" || time.Now().After(deadline) {
			t.Fatalf("acme's open session after raising its limit to 2: %v", err)
		}
	}
}

// TestLimitTransactionsPerSecond: over its rate a tenant's transaction
// waits for its turn, and one whose turn is more than a second away fails
// with 53400 without running; another tenant is not slowed. Both modes,
// simple and extended protocol.
func TestLimitTransactionsPerSecond(t *testing.T) {
	e := newLimitsEnv(t)
	e.limit(t, "acme", catalog.LimitTransactionsPerSecond, val(2))
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		for _, qm := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
			t.Run(mode+"/"+qm.String(), func(t *testing.T) {
				ctx := ctxT(t)
				conns := make([]*pgx.Conn, 6)
				for i := range conns {
					conns[i] = e.connect(t, mode, "acme")
				}
				time.Sleep(1100 * time.Millisecond) // a full bucket: 2 tokens
				var mu sync.Mutex
				codes := map[string]int{}
				var wg sync.WaitGroup
				for _, c := range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						_, err := c.Exec(ctx, "SELECT 1", qm)
						mu.Lock()
						codes[sqlstateOf(err)]++
						mu.Unlock()
					}()
				}
				wg.Wait()
				// 2 at once, 2 more within the second (0.5 s, 1 s), the
				// last 2 would wait longer.
				if codes[""] != 4 || codes["53400"] != 2 {
					t.Fatalf("6 concurrent transactions at 2 a second: outcomes %v; want 4 ok, 2 × 53400", codes)
				}
				// The client whose transaction was refused goes on.
				other := e.connect(t, mode, "globex")
				start := time.Now()
				for range 20 {
					if _, err := other.Exec(ctx, "SELECT 1", qm); err != nil {
						t.Fatal(err)
					}
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("globex's 20 transactions beside acme's rate took %s", d)
				}
				time.Sleep(1100 * time.Millisecond)
				for _, c := range conns[:2] {
					if _, err := c.Exec(ctx, "SELECT 1", qm); err != nil {
						t.Fatalf("acme after its bucket refilled: %v", err)
					}
				}
			})
		}
	}
}

// TestLimitServerTimePerSecond: a tenant that used more than its
// server_time_per_second (counted per statement, so an abandoned
// transaction pays too) has its next transactions held, each at most a
// second, until the time is paid for; they run, none is refused; another
// tenant is not slowed; a cancel request reaches a held statement. Both
// modes, one with the simple protocol, the other with the extended.
func TestLimitServerTimePerSecond(t *testing.T) {
	e := newLimitsEnv(t)
	e.limit(t, "acme", catalog.LimitServerTimePerSecond, val(100))
	for mode, qm := range map[string]pgx.QueryExecMode{proxy.PoolSession: pgx.QueryExecModeSimpleProtocol, proxy.PoolTransaction: pgx.QueryExecModeExec} {
		t.Run(mode+"/"+qm.String(), func(t *testing.T) {
			ctx := ctxT(t)
			c := e.connect(t, mode, "acme")
			time.Sleep(time.Second) // a full bucket: 100 ms
			timed := func(c *pgx.Conn, sql string) time.Duration {
				t.Helper()
				start := time.Now()
				if _, err := c.Exec(ctx, sql, qm); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
				return time.Since(start)
			}
			if d := timed(c, "SELECT 1"); d > 500*time.Millisecond {
				t.Fatalf("acme's first transaction, within its budget, took %s", d)
			}
			// 300 ms of a budget of 100 ms a second: it owes 2 s, though
			// the client that ran it left before its transaction ended.
			gone := e.connect(t, mode, "acme")
			timed(gone, "BEGIN")
			timed(gone, "SELECT pg_sleep(0.3)")
			gone.Close(ctx)
			// A cancel request reaches a statement held for it, which
			// then never runs.
			done := make(chan error, 1)
			go func() {
				_, err := c.Exec(ctx, "SELECT pg_sleep(5)", qm)
				done <- err
			}()
			time.Sleep(300 * time.Millisecond)
			if err := c.PgConn().CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; sqlstateOf(err) != "57014" {
				t.Fatalf("cancel of a held statement: %v; want 57014", err)
			}
			if d := timed(c, "SELECT 1"); d < 900*time.Millisecond || d > 1500*time.Millisecond {
				t.Fatalf("acme's transaction after using 3 s of budget took %s; want held about the 1 s bound", d)
			}
			other := e.connect(t, mode, "globex")
			start := time.Now()
			for range 20 {
				timed(other, "SELECT 1")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("globex's 20 transactions beside acme's debt took %s", d)
			}
			// Paid for about 3 s after it was run up: acme is served at once.
			time.Sleep(2 * time.Second)
			if d := timed(c, "SELECT 1"); d > 500*time.Millisecond {
				t.Fatalf("acme's transaction after paying its debt took %s", d)
			}
		})
	}
}

// TestLimitTimeouts: the tenant's sessions start with its
// statement_timeout (a longer statement is canceled with 57014, the
// session going on; another tenant's is not), and its own
// idle_in_transaction_timeout replaces the proxy's (25P03), in both modes.
func TestLimitTimeouts(t *testing.T) {
	e := newLimitsEnv(t)
	e.limit(t, "acme", catalog.LimitStatementTimeout, val(200))
	e.limit(t, "acme", catalog.LimitIdleInTransactionTimeout, val(300))
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(mode, func(t *testing.T) {
			ctx := ctxT(t)
			c := e.connect(t, mode, "acme")
			if _, err := c.Exec(ctx, "SELECT pg_sleep(2)"); sqlstateOf(err) != "57014" {
				t.Fatalf("a 2 s statement with a limit of 200ms: %v; want 57014", err)
			}
			other := e.connect(t, mode, "globex")
			if _, err := other.Exec(ctx, "SELECT pg_sleep(0.5)"); err != nil {
				t.Fatalf("globex's statement under acme's limit: %v", err)
			}
			if _, err := c.Exec(ctx, "BEGIN"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			_, err := c.Exec(ctx, "SELECT 1")
			if code := sqlstateOf(err); err == nil || code != "25P03" && code != "" {
				t.Fatalf("after 1 s idle in a transaction with a limit of 300ms: %v; want the session ended (25P03)", err)
			}
		})
	}
}
