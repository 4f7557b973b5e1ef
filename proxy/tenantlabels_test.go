package proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/pool"
)

// unregisteredTimes is a tenant's entry counting into series no registry
// sees, for relay tests that need somewhere to count.
func unregisteredTimes(tenant string) *tenantTimes {
	m, err := newMetrics(nil, func() float64 { return 0 })
	if err != nil {
		panic(err)
	}
	t := &tenantTimes{}
	t.series.Store(newTenantLabels(m, 1, time.Minute).assign(tenant))
	return t
}

// labelsServer is a Server with only what the per-tenant metrics need,
// registered in a fresh registry.
func labelsServer(t *testing.T, max int) (*Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, func() float64 { return 0 })
	if err != nil {
		t.Fatal(err)
	}
	// An hour: the test ranks when it means to, not at a scrape.
	s := &Server{times: make(map[string]*tenantTimes), labels: newTenantLabels(m, max, time.Hour), metrics: m}
	if err := register(reg, newTenantCollector(s)); err != nil {
		t.Fatal(err)
	}
	return s, reg
}

// testSession is what a session of tenant does to the metrics first: it
// makes the tenant's entry, as timesOf does, and returns it.
func (s *Server) testSession(tenant string) *tenantTimes {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.times[tenant]
	if t == nil {
		t = &tenantTimes{tier: "shared"}
		t.series.Store(s.labels.assign(tenant))
		s.times[tenant] = t
	}
	return t
}

// transactions runs n transactions of d through t's hot path.
func (t *tenantTimes) transactions(n int, d time.Duration) {
	for range n {
		t.assigned(time.Now())
		t.tally(countQueries).Inc()
		t.tally(countTransactions).Inc()
		t.transacted(d)
	}
}

// tenantValues gathers reg and returns, per metric family with a tenant
// label, the set of its tenant values.
func tenantValues(t *testing.T, reg *prometheus.Registry) map[string]map[string]bool {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]map[string]bool)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" {
					if out[mf.GetName()] == nil {
						out[mf.GetName()] = make(map[string]bool)
					}
					out[mf.GetName()][l.GetValue()] = true
				}
			}
		}
	}
	return out
}

// TestTenantLabelsStayBoundedWith10000Tenants: with 10,000 tenants, every
// per-tenant metric has at most the busiest N tenants plus "other"; when
// the busy ones change, the series of those that dropped out go, and
// counters keep counting under "other".
func TestTenantLabelsStayBoundedWith10000Tenants(t *testing.T) {
	const tenants, top = 10000, 20
	s, reg := labelsServer(t, top)
	for i := range tenants {
		s.testSession(fmt.Sprintf("t%05d", i)).transactions(1, time.Millisecond)
	}
	// The busy ones: t09900… with more transactions than the rest.
	for i := tenants - top; i < tenants; i++ {
		s.times[fmt.Sprintf("t%05d", i)].transactions(5, time.Millisecond)
	}
	s.labels.rank(s.times, time.Now())
	checkLabels(t, reg, top, func(i int) bool { return i >= tenants-top })

	// Now others are busy and the first busy set goes quiet, as if
	// deleted: their series must go.
	for i := range top {
		s.times[fmt.Sprintf("t%05d", i)].transactions(3, time.Millisecond)
	}
	s.times["t09999"].transactions(1, time.Millisecond) // under other now
	s.labels.rank(s.times, time.Now())
	checkLabels(t, reg, top, func(i int) bool { return i < top })
	before := testutil.ToFloat64(s.labels.other.counters[countTransactions])
	s.times["t09999"].transactions(1, time.Millisecond)
	if after := testutil.ToFloat64(s.labels.other.counters[countTransactions]); after != before+1 {
		t.Errorf("tenant=other counted %v transactions after the re-ranking, %v before; want one more", after, before)
	}
}

// checkLabels checks every tenant-labelled metric of reg holds exactly the
// tenants own says, plus "other".
func checkLabels(t *testing.T, reg *prometheus.Registry, top int, own func(i int) bool) {
	t.Helper()
	values := tenantValues(t, reg)
	for _, name := range []string{"tenantproxy_transactions_total", "tenantproxy_queries_total",
		"tenantproxy_transaction_duration_seconds", "tenantproxy_tenant_pool_wait_seconds", "tenantproxy_client_connections"} {
		got := values[name]
		if len(got) > top+1 {
			t.Errorf("%s has %d tenant values; want at most %d", name, len(got), top+1)
		}
		if !got[otherTenants] {
			t.Errorf("%s has no tenant=%q", name, otherTenants)
		}
		for v := range got {
			var i int
			fmt.Sscanf(v, "t%05d", &i)
			if v != otherTenants && !own(i) {
				t.Errorf("%s still has tenant=%q, which is not among the busiest", name, v)
			}
		}
	}
}

// TestTenantLabelsNewTenantsGetALabelWhileThereIsRoom: a small
// installation sees each tenant at once, before any ranking; past the cap
// a new tenant counts under "other" until ranked.
func TestTenantLabelsNewTenantsGetALabelWhileThereIsRoom(t *testing.T) {
	s, reg := labelsServer(t, 2)
	s.testSession("acme").transactions(1, time.Millisecond)
	s.testSession("beta").transactions(1, time.Millisecond)
	s.testSession("gamma").transactions(2, time.Millisecond)
	got := tenantValues(t, reg)["tenantproxy_transactions_total"]
	if !got["acme"] || !got["beta"] || got["gamma"] || !got[otherTenants] {
		t.Fatalf("tenant values %v; want acme, beta and other", got)
	}
	s.labels.rank(s.times, time.Now())
	got = tenantValues(t, reg)["tenantproxy_transactions_total"]
	if !got["gamma"] || len(got) != 3 {
		t.Fatalf("after ranking, tenant values %v; want gamma (the busiest) among 2 plus other", got)
	}
}

// TestTenantCollectorMovesClientsWithTheLabel: the client gauge follows a
// tenant into "other" instead of staying behind on its old series.
func TestTenantCollectorMovesClientsWithTheLabel(t *testing.T) {
	s, reg := labelsServer(t, 1)
	a := s.testSession("acme")
	a.clients.Add(2)
	b := s.testSession("beta")
	b.clients.Add(1)
	b.transactions(1, time.Millisecond)
	s.labels.rank(s.times, time.Now())
	if got := testutil.ToFloat64(collectorGauge(t, reg, "beta")); got != 1 {
		t.Errorf("beta (the busiest) has %v clients; want 1", got)
	}
	if got := testutil.ToFloat64(collectorGauge(t, reg, otherTenants)); got != 2 {
		t.Errorf("other has %v clients; want acme's 2", got)
	}
}

// collectorGauge is tenantproxy_client_connections{tenant} as a gauge.
func collectorGauge(t *testing.T, reg *prometheus.Registry, tenant string) prometheus.Gauge {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
	for _, mf := range mfs {
		if mf.GetName() != "tenantproxy_client_connections" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == tenant {
				g.Set(m.GetGauge().GetValue())
			}
		}
	}
	return g
}

// TestTierSpreadOfP99s: the tier's spread is the lowest, median and
// highest of its tenants' own p99s, each a bucket's upper bound; tenants
// with too few transactions to have a p99 are left out.
func TestTierSpreadOfP99s(t *testing.T) {
	s, reg := labelsServer(t, 20)
	s.testSession("fast").transactions(minP99Transactions, 800*time.Microsecond)
	s.testSession("mid").transactions(minP99Transactions, 20*time.Millisecond)
	slow := s.testSession("slow")
	slow.transactions(minP99Transactions-2, time.Millisecond)
	slow.transactions(2, 3*time.Second) // its p99 is the slow tail
	s.testSession("few").transactions(minP99Transactions-1, 10*time.Second)
	s.labels.rank(s.times, time.Now())
	want := `
# HELP tenantproxy_tier_transaction_p99_spread_ratio The highest tenant p99 transaction time of a tier divided by the median one (tenantproxy_tier_transaction_p99_seconds): 1 when the tier's tenants fare alike, large when one tenant's transactions are much slower than its neighbours'.
# TYPE tenantproxy_tier_transaction_p99_spread_ratio gauge
tenantproxy_tier_transaction_p99_spread_ratio{tier="shared"} 200
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tenantproxy_tier_transaction_p99_spread_ratio"); err != nil {
		t.Error(err)
	}
	sp := s.labels.p99s["shared"]
	if sp.min != .001 || sp.median != .025 || sp.max != 5 {
		t.Errorf("spread %+v; want min 0.001, median 0.025, max 5", sp)
	}
}

// BenchmarkTenantTransactionMetrics is what one transaction costs the
// per-tenant metrics (a pool wait, a statement, a transaction and its
// time), from parallel sessions of one tenant: atomic adds and loads, no
// lock of the proxy's and no allocation.
//
//	go test -run '^$' -bench TenantTransactionMetrics -benchmem ./proxy
//	BenchmarkTenantTransactionMetrics-2   520–830 ns/op   0 B/op   0 allocs/op
func BenchmarkTenantTransactionMetrics(b *testing.B) {
	t := unregisteredTimes("acme")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t.transactions(1, time.Millisecond)
		}
	})
}

// TestLimitUsageIsTheHighestOfTheLabelsTenants: a labelled tenant's usage
// of its client cap is its own; under "other" it is the highest of those
// tenants', so an alert at 80% still fires for a tenant without a label.
func TestLimitUsageIsTheHighestOfTheLabelsTenants(t *testing.T) {
	s, reg := labelsServer(t, 1)
	for _, tt := range []struct {
		tenant      string
		clients, of int64
	}{{"acme", 9, 10}, {"beta", 1, 4}, {"gamma", 3, 4}, {"delta", 5, 0}} {
		tn := s.testSession(tt.tenant)
		tn.clients.Add(tt.clients)
		tn.clientCap = tt.of
	}
	want := `
# HELP tenantproxy_tenant_limit_usage_ratio How much of a connection limit a tenant uses, per tenant as tenantproxy_client_connections (under "other": the highest of those tenants) and limit: client_connections (its clients over its cap) and server_connections (the server connections it holds over its share of the pool, the fullest pool); 0 without a limit.
# TYPE tenantproxy_tenant_limit_usage_ratio gauge
tenantproxy_tenant_limit_usage_ratio{limit="client_connections",tenant="acme"} 0.9
tenantproxy_tenant_limit_usage_ratio{limit="client_connections",tenant="other"} 0.75
tenantproxy_tenant_limit_usage_ratio{limit="server_connections",tenant="acme"} 0
tenantproxy_tenant_limit_usage_ratio{limit="server_connections",tenant="other"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tenantproxy_tenant_limit_usage_ratio"); err != nil {
		t.Error(err)
	}
}

// TestRefusalsAreCountedByLimit: the limits' refusals count under their
// reason and the tenant's label; other errors are not refusals.
func TestRefusalsAreCountedByLimit(t *testing.T) {
	s, _ := labelsServer(t, 1)
	s.testSession("acme")
	s.countRefusal("acme", &overLimit{reason: refusedRate, err: pgerr.Errorf(pgerr.CodeRateLimited, "over its rate")})
	s.countRefusal("acme", pgerr.Errorf(pgerr.CodeRateLimited, "paused; timed out waiting for RESUME"))
	s.countRefusal("acme", fmt.Errorf("acquire: %w", pool.ErrWaitTimeout))
	s.countRefusal("beta", pgerr.Errorf(pgerr.CodeTooManyConnections, "too many"))
	s.countRefusal("acme", errShuttingDown)
	for _, tt := range []struct {
		tenant, reason string
		want           float64
	}{{"acme", refusedRate, 1}, {"acme", refusedPoolWait, 1}, {otherTenants, refusedClients, 1}, {"acme", refusedClients, 0}} {
		if got := testutil.ToFloat64(s.metrics.refusals.WithLabelValues(tt.tenant, tt.reason)); got != tt.want {
			t.Errorf("refusals{tenant=%q, reason=%q} = %v; want %v", tt.tenant, tt.reason, got, tt.want)
		}
	}
}
