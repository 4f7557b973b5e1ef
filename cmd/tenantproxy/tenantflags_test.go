package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

const flagsPassword = "flags-admin-password"

// planOf reads what SQL sees of the session's plan and features.
func planOf(t *testing.T, conn *pgx.Conn) (plan, features string) {
	t.Helper()
	err := conn.QueryRow(context.Background(), "SELECT current_setting('tenant.plan'), current_setting('tenant.features')").Scan(&plan, &features)
	if err != nil {
		t.Fatal(err)
	}
	return plan, compact(t, features)
}

// features is the tenant's features as the catalog has them, compacted.
func features(t *testing.T, sub string) string {
	t.Helper()
	var tn catalog.Tenant
	if err := json.Unmarshal([]byte(mustCLI(t, "tenant", "show", sub, "-o", "json")), &tn); err != nil {
		t.Fatal(err)
	}
	return compact(t, string(tn.Features))
}

func compact(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatalf("%v in %q", err, s)
	}
	return b.String()
}

func mustLogin(t *testing.T, addr, tenant, params string) *pgx.Conn {
	t.Helper()
	conn, err := loginTenant(addr, tenant, "admin", flagsPassword, params)
	if err != nil {
		t.Fatalf("login to %s: %v", tenant, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestPlanAndFeaturesAreReadOnlySettingsInEveryTierAndMode(t *testing.T) {
	catalogDSN := pgtest.NewDatabase(t, pgtest.StartT(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", catalogDSN)
	mustCLI(t, "migrate", "up")
	tenants := map[string]string{"acme": "free", "globex": "free", "initech": "standard", "umbrella": "enterprise"}
	for sub, plan := range tenants {
		mustCLI(t, "tenant", "create", sub, "--plan", plan, "--admin-password", flagsPassword)
	}
	proxies := map[string]string{
		proxy.PoolSession:     userProxy(t, catalogDSN, proxy.PoolSession),
		proxy.PoolTransaction: userProxy(t, catalogDSN, proxy.PoolTransaction),
	}
	ctx := context.Background()

	for mode, addr := range proxies {
		for sub, plan := range tenants {
			t.Run(mode+"/"+sub, func(t *testing.T) {
				conn := mustLogin(t, addr, sub, "")
				if gotPlan, gotFeatures := planOf(t, conn); gotPlan != plan || gotFeatures != features(t, sub) {
					t.Fatalf("tenant.plan %q, tenant.features %s; want %q and the catalog's features", gotPlan, gotFeatures, plan)
				}
				for _, sql := range []string{"SET tenant.plan = 'enterprise'", "SET LOCAL tenant.plan = 'enterprise'",
					`SET tenant.features = '{"sso": true}'`, "RESET tenant.plan", "SELECT set_config('tenant.plan', 'enterprise', false)",
					"ALTER ROLE CURRENT_USER SET tenant.plan = 'enterprise'"} {
					if _, err := conn.Exec(ctx, sql); sqlstate(err) != "42501" {
						t.Errorf("%s: %v; want 42501", sql, err)
					}
				}
				if gotPlan, _ := planOf(t, conn); gotPlan != plan {
					t.Fatalf("tenant.plan %q after the refusals; want %q", gotPlan, plan)
				}
				_, err := loginTenant(addr, sub, "admin", flagsPassword, "&options="+url.QueryEscape("-c tenant.plan=enterprise"))
				if sqlstate(err) != "42501" {
					t.Fatalf("start-up option -c tenant.plan=enterprise: %v; want 42501", err)
				}
			})
		}
	}

	t.Run("update reaches new and open sessions within a second", func(t *testing.T) {
		open := map[string]*pgx.Conn{}
		for mode, addr := range proxies {
			open[mode] = mustLogin(t, addr, "acme", "")
			planOf(t, open[mode]) // a transaction before the change
		}
		start := time.Now()
		mustCLI(t, "tenant", "update", "acme", "--plan", "pro", "--no-move", "--feature", "beta=true", "--feature", "seats=25")
		want := features(t, "acme")
		for mode, addr := range proxies {
			for {
				conn := mustLogin(t, addr, "acme", "")
				plan, features := planOf(t, conn)
				conn.Close(ctx)
				if plan == "pro" && features == want {
					t.Logf("%s: seen by a new session after %v", mode, time.Since(start))
					break
				}
				if time.Since(start) > time.Second {
					t.Fatalf("%s: a new session 1 s after the update sees plan %q, features %s; want pro, %s", mode, plan, features, want)
				}
				time.Sleep(10 * time.Millisecond)
			}
			// Documented: a session open before sees it from its next
			// transaction on, within the same second.
			for plan, _ := planOf(t, open[mode]); plan != "pro"; plan, _ = planOf(t, open[mode]) {
				if time.Since(start) > time.Second {
					t.Fatalf("%s: a session open before the update sees plan %q 1 s after it; want pro", mode, plan)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(want), &got); err != nil || got["beta"] != true || got["seats"] != float64(25) || got["sso"] != false {
			t.Fatalf("features after update %s: want beta true, seats 25, the plan's sso kept", want)
		}
	})

	t.Run("two tenants on one server connection see their own", func(t *testing.T) {
		mustCLI(t, "tenant", "update", "globex", "--feature", "only_globex=yes")
		// One server connection for the shared tier's key: every
		// transaction switches it between the two tenants' contexts.
		addr := poolProxy(t, catalogDSN, proxy.PoolTransaction, pool.Config{MaxConnsPerKey: 1, MaxConnsPerTenant: 1})
		want := map[string]string{"acme": features(t, "acme"), "globex": features(t, "globex")}
		conns := map[string]*pgx.Conn{"acme": mustLogin(t, addr, "acme", ""), "globex": mustLogin(t, addr, "globex", "")}
		pids := map[int32]bool{}
		for i := range 6 {
			sub := []string{"acme", "globex"}[i%2]
			var pid int32
			if err := conns[sub].QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			pids[pid] = true
			plan, got := planOf(t, conns[sub])
			if got != want[sub] {
				t.Fatalf("round %d: %s sees features %s; want its own %s", i, sub, got, want[sub])
			}
			if wantPlan := map[string]string{"acme": "pro", "globex": "free"}[sub]; plan != wantPlan {
				t.Fatalf("round %d: %s sees plan %q; want %q", i, sub, plan, wantPlan)
			}
		}
		if len(pids) != 1 {
			t.Fatalf("the tenants ran on %d server connections; want the one of the pool: %v", len(pids), fmt.Sprint(pids))
		}
	})
}
