package catalog_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func TestParseLimit(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	for _, tt := range []struct {
		in    string
		name  string
		value *float64 // nil: removes the override
		bad   bool
	}{
		{in: "client_connections=20", name: "client_connections", value: f(20)},
		{in: " server_connections = 3 ", name: "server_connections", value: f(3)},
		{in: "statement_timeout=30s", name: "statement_timeout", value: f(30_000)},
		{in: "statement_timeout=5min", name: "statement_timeout", value: f(300_000)},
		{in: "statement_timeout=1.5h", name: "statement_timeout", value: f(5_400_000)},
		{in: "statement_timeout=250", name: "statement_timeout", value: f(250)},
		{in: "idle_in_transaction_timeout=1500us", name: "idle_in_transaction_timeout", value: f(2)},
		{in: "transactions_per_second=12.5", name: "transactions_per_second", value: f(12.5)},
		{in: "storage_mb=2GB", name: "storage_mb", value: f(2048)},
		{in: "storage_mb=512", name: "storage_mb", value: f(512)},
		{in: "storage_mb=0", name: "storage_mb", value: f(0)},
		{in: "statement_timeout=", name: "statement_timeout"},

		{in: "client_connections=-1", bad: true},
		{in: "client_connections=2.5", bad: true},
		{in: "client_connections=1e12", bad: true},
		{in: "statement_timeout=5 fortnights", bad: true},
		{in: "statement_timeout=30S", bad: true},
		{in: "storage_mb=1PB", bad: true},
		{in: "transactions_per_second=fast", bad: true},
		{in: "transactions_per_second=10/s", bad: true},
		{in: "max_users=3", bad: true},
		{in: "client_connections", bad: true},
		{in: "=3", bad: true},
	} {
		name, value, err := catalog.ParseLimit(tt.in)
		var verr *catalog.ValidationError
		if tt.bad {
			if !errors.As(err, &verr) {
				t.Errorf("ParseLimit(%q) = %s, %v, %v; want a ValidationError", tt.in, name, value, err)
			}
			continue
		}
		if err != nil || name != tt.name || (value == nil) != (tt.value == nil) || value != nil && *value != *tt.value {
			t.Errorf("ParseLimit(%q) = %q, %v, %v; want %q, %v", tt.in, name, value, err, tt.name, tt.value)
		}
	}
}

// TestLimitsResolveTenantOverPlanOverDefault sets a plan's limit and a
// tenant's own, and checks each tenant's effective value and its source
// on a second instance, which must see the changes within a second.
func TestLimitsResolveTenantOverPlanOverDefault(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	e.create(t, "quiet", catalog.PlanFree)
	e.create(t, "loud", catalog.PlanFree)
	other := openCatalog(t, e.dsn, nil)

	q, err := other.TenantBySubdomain(ctx, "quiet")
	if err != nil {
		t.Fatal(err)
	}
	if l := q.Limits; l.ServerConnections != 4 || l.TransactionsPerSecond != 1000 || l.Source["server_connections"] != catalog.SourceDefault {
		t.Fatalf("a new free tenant's limits: %+v; want the free plan's defaults", l)
	}

	v := func(x float64) *float64 { return &x }
	if _, err := e.cat.SetPlanLimits(ctx, catalog.PlanFree, map[string]*float64{"transactions_per_second": v(50), "statement_timeout": v(10_000)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cat.Update(ctx, "loud", catalog.UpdateRequest{Limits: map[string]*float64{"transactions_per_second": v(5)}}); err != nil {
		t.Fatal(err)
	}
	waitLimits(t, ctx, other, "quiet", func(l catalog.Limits) bool {
		return l.TransactionsPerSecond == 50 && l.Source["transactions_per_second"] == catalog.SourcePlan &&
			l.StatementTimeout == 10*time.Second && l.ClientConnections == 100 && l.Source["client_connections"] == catalog.SourceDefault
	})
	waitLimits(t, ctx, other, "loud", func(l catalog.Limits) bool {
		return l.TransactionsPerSecond == 5 && l.Source["transactions_per_second"] == catalog.SourceTenant &&
			l.StatementTimeout == 10*time.Second && l.Source["statement_timeout"] == catalog.SourcePlan
	})

	// Dropping the tenant's own value gives it the plan's again; dropping
	// the plan's gives the default.
	if _, err := e.cat.Update(ctx, "loud", catalog.UpdateRequest{Limits: map[string]*float64{"transactions_per_second": nil}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cat.SetPlanLimits(ctx, catalog.PlanFree, map[string]*float64{"statement_timeout": nil}); err != nil {
		t.Fatal(err)
	}
	waitLimits(t, ctx, other, "loud", func(l catalog.Limits) bool {
		return l.TransactionsPerSecond == 50 && l.Source["transactions_per_second"] == catalog.SourcePlan &&
			l.StatementTimeout == 0 && l.Source["statement_timeout"] == catalog.SourceDefault
	})

	var verr *catalog.ValidationError
	if _, err := e.cat.SetPlanLimits(ctx, "platinum", map[string]*float64{"storage_mb": v(1)}); !errors.As(err, &verr) {
		t.Fatalf("limits of an unknown plan: %v; want a ValidationError", err)
	}
	if _, err := e.cat.Update(ctx, "loud", catalog.UpdateRequest{Limits: map[string]*float64{"max_users": v(1)}}); !errors.As(err, &verr) {
		t.Fatalf("an unknown limit: %v; want a ValidationError", err)
	}
}

func waitLimits(t *testing.T, ctx context.Context, c *catalog.Catalog, subdomain string, ok func(catalog.Limits) bool) {
	t.Helper()
	start := time.Now()
	for {
		tn, err := c.TenantBySubdomain(ctx, subdomain)
		if err != nil {
			t.Fatal(err)
		}
		if ok(tn.Limits) {
			return
		}
		if time.Since(start) > time.Second {
			t.Fatalf("%s's limits on another instance 1 s after the change: %+v", subdomain, tn.Limits)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
