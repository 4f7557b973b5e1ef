package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// startInstance starts a proxy as another process of the deployment
// would run it: its own catalog connection (cache and LISTEN) and pool,
// over e's catalog database.
func (e *proxyEnv) startInstance(t *testing.T, cfg proxy.Config) string {
	t.Helper()
	cat, err := catalog.Open(ctxT(t), e.catalogDSN, catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	mgr, err := pool.NewManager(pool.Config{}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	_, addr := StartProxy(t, cfg, cat, mgr)
	return addr
}

// sqlPlan is what a new transaction of conn sees of its tenant's plan and
// features.
func sqlPlan(t *testing.T, conn *pgx.Conn) (plan, features string) {
	t.Helper()
	err := conn.QueryRow(ctxT(t), "SELECT current_setting('tenant.plan'), current_setting('tenant.features')").Scan(&plan, &features)
	if err != nil {
		t.Fatal(err)
	}
	return plan, features
}

// awaitPlan polls each of conns with new transactions until seen says
// the change is there, and fails if that takes longer than the second
// the README promises from changed on.
func awaitPlan(t *testing.T, conns []*pgx.Conn, changed time.Time, what string, seen func(plan, features string) bool) {
	t.Helper()
	for i, conn := range conns {
		for {
			plan, features := sqlPlan(t, conn)
			if seen(plan, features) {
				break
			}
			if time.Since(changed) > time.Second {
				t.Fatalf("instance %d: a new transaction of an open session still sees plan %q, features %s a second after %s", i, plan, features, what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestPlanAndFeatureChangesReachOpenSessionsOnEveryInstance: two proxy
// instances over one catalog, each with a session open since before the
// change; within a second of `tenant update --feature` (and of --plan) a
// new transaction of each session sees it in current_setting, in both
// pool modes (session mode: the proxy sets it again before the session's
// next transaction).
func TestPlanAndFeatureChangesReachOpenSessionsOnEveryInstance(t *testing.T) {
	e := newProxyEnv(t)
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(mode, func(t *testing.T) {
			ctx := ctxT(t)
			sub := map[string]string{proxy.PoolSession: "acme", proxy.PoolTransaction: "globex"}[mode]
			var conns []*pgx.Conn
			for range 2 {
				conn := connect(t, dsn(e.startInstance(t, proxy.Config{PoolMode: mode}), "alice."+sub, tenantPassword))
				if plan, features := sqlPlan(t, conn); plan != catalog.PlanFree || strings.Contains(features, "live_flag") {
					t.Fatalf("before the change: plan %q, features %s", plan, features)
				}
				conns = append(conns, conn)
			}
			if _, err := e.cat.Update(ctx, sub, catalog.UpdateRequest{Features: map[string]any{"live_flag": 1}}); err != nil {
				t.Fatal(err)
			}
			awaitPlan(t, conns, time.Now(), "--feature live_flag=1", func(_, features string) bool {
				return strings.Contains(features, `"live_flag"`)
			})
			if _, err := e.cat.Update(ctx, sub, catalog.UpdateRequest{Plan: catalog.PlanStandard}); err != nil {
				t.Fatal(err)
			}
			awaitPlan(t, conns, time.Now(), "--plan standard", func(plan, _ string) bool { return plan == catalog.PlanStandard })
			// The session is as usable as before, in and out of a block.
			tx, err := conns[0].Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if plan, _ := sqlPlan(t, conns[0]); plan != catalog.PlanStandard {
				t.Fatalf("inside a transaction block: plan %q", plan)
			}
			if err := tx.Commit(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}
