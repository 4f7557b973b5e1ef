package test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tenantproxy/tenantproxy/canary"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// TestIsolationCanary runs the canary through the real proxy over every
// tier: clean, it finds nothing; with the shared tier's RLS switched off
// behind the proxy's back, it reports each leak as a critical log line
// and counts it.
func TestIsolationCanary(t *testing.T) {
	e := newIsolationEnv(t)
	ctx := ctxT(t)
	core, logs := observer.New(zap.InfoLevel)
	reg := prometheus.NewRegistry()
	c, err := canary.New(canary.Config{ProxyAddr: e.addr, Sample: -1, Logger: zap.New(core), Registerer: reg}, e.cat)
	if err != nil {
		t.Fatal(err)
	}

	rep, err := c.Check(ctx)
	if err != nil {
		t.Fatalf("clean check: %v", err)
	}
	if len(rep.Tenants) != 6 || len(rep.Violations) != 0 {
		t.Fatalf("clean check probed %v and found %v; want 6 tenants, no violations", rep.Tenants, rep.Violations)
	}

	b, err := e.cat.Backend(ctx, migrations.MainBackend)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := migrations.ConnectAs(ctx, b.AdminDSN, migrations.SharedDatabase)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "ALTER TABLE "+migrations.CanaryTable(migrations.KindShared, "")+" DISABLE ROW LEVEL SECURITY"); err != nil {
		t.Fatal(err)
	}
	rep, err = c.Check(ctx)
	if err != nil {
		t.Fatalf("check with RLS off: %v", err)
	}
	// acme and globex, the shared tier, each see the other's row.
	leaks := map[string]string{}
	for _, v := range rep.Violations {
		leaks[v.Tenant] = v.Other
	}
	if len(rep.Violations) != 2 || leaks["acme"] != "globex" || leaks["globex"] != "acme" {
		t.Fatalf("violations %+v; want acme and globex seeing each other's rows", rep.Violations)
	}
	critical := logs.FilterMessage("tenant isolation violated").FilterField(zap.String("severity", "critical"))
	if critical.Len() != 2 || critical.All()[0].Level != zap.ErrorLevel {
		t.Errorf("%d critical log lines (%v); want 2 at error level", critical.Len(), critical.All())
	}
	if got := metricValue(t, reg, "tenantproxy_isolation_violations_total"); got != 2 {
		t.Errorf("tenantproxy_isolation_violations_total = %v; want 2", got)
	}
}
