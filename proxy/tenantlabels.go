package proxy

import (
	"cmp"
	"math"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantproxy/tenantproxy/pool"
)

// otherTenants is the tenant label value every tenant outside the busiest
// Config.MetricsTenants counts under.
const otherTenants = "other"

// The per-tenant counters of a tenantSeries, also the indexes of a
// tenant's totals (tenantTimes.totals).
const (
	countQueries = iota
	countTransactions
	countReceived
	countSent
	// countHeld is seconds, in the series only (a total of whole units
	// would lose them).
	countHeld
	numCounters
)

// tenantSeries are the series of one tenant label value: a tenant's own
// or "other". They are looked up when a tenant is given its label, so
// counting into them hashes no label values.
type tenantSeries struct {
	label    string
	counters [numCounters]prometheus.Counter
	txTime   prometheus.Observer
	waitTime prometheus.Observer
}

// tenantLabels decides which tenants have a label value of their own: the
// busiest max by transactions since the last ranking, or, between two
// rankings, any new tenant while there is room. Every other tenant counts
// under "other". Each tenant's entry (tenantTimes.series) points at its
// series; sessions load that pointer per count, so a new ranking reaches
// open sessions with no lock on their path. It is guarded by Server.mu.
type tenantLabels struct {
	m        *metrics
	max      int
	interval time.Duration
	own      map[string]*tenantSeries
	other    *tenantSeries
	rankedAt time.Time
	// p99s are the per-tier spreads of tenants' p99 transaction times
	// over the last ranking's window, for the collector.
	p99s map[string]tierSpread
}

func newTenantLabels(m *metrics, max int, interval time.Duration) *tenantLabels {
	l := &tenantLabels{m: m, max: max, interval: interval, own: make(map[string]*tenantSeries), rankedAt: time.Now()}
	l.other = l.seriesOf(otherTenants)
	// At 0 from the start, so that the alert rules' rates are defined
	// before the first refusal.
	for _, reason := range []string{refusedRate, refusedPoolWait, refusedClients} {
		m.refusals.WithLabelValues(otherTenants, reason)
	}
	return l
}

func (l *tenantLabels) seriesOf(label string) *tenantSeries {
	s := &tenantSeries{label: label, txTime: l.m.txDuration.WithLabelValues(label), waitTime: l.m.poolWait.WithLabelValues(label)}
	for i, vec := range l.m.perTenant() {
		s.counters[i] = vec.WithLabelValues(label)
	}
	return s
}

// assign gives a tenant seen for the first time its series: its own if
// there is room, else "other" until a ranking picks it.
func (l *tenantLabels) assign(tenant string) *tenantSeries {
	if len(l.own) >= l.max {
		return l.other
	}
	s := l.seriesOf(tenant)
	l.own[tenant] = s
	return s
}

// labelOf is the label value tenant counts under.
func (l *tenantLabels) labelOf(tenant string) string {
	if _, ok := l.own[tenant]; ok {
		return tenant
	}
	return otherTenants
}

// rank picks the busiest tenants of times again: those with the most
// transactions since the previous ranking, then the most clients. A
// tenant with neither (idle, or deleted from the catalog) is not picked.
// The tenants that lose their label have their series removed, so the
// series stay bounded by max whatever comes and goes.
func (l *tenantLabels) rank(times map[string]*tenantTimes, now time.Time) {
	type busy struct {
		tenant   string
		t        *tenantTimes
		xacts    uint64
		clients  int64
		p99      float64
		measured bool
	}
	list := make([]busy, 0, len(times))
	for tenant, t := range times {
		xacts := t.totals[countTransactions].Load()
		b := busy{tenant: tenant, t: t, xacts: xacts - t.rankedXacts, clients: t.clients.Load()}
		t.rankedXacts = xacts
		b.p99, b.measured = t.window.p99()
		list = append(list, b)
	}
	slices.SortFunc(list, func(a, b busy) int {
		return cmp.Or(cmp.Compare(b.xacts, a.xacts), cmp.Compare(b.clients, a.clients), cmp.Compare(a.tenant, b.tenant))
	})
	own := make(map[string]*tenantSeries, l.max)
	spreads := make(map[string][]float64)
	for i, b := range list {
		s := l.other
		if i < l.max && (b.xacts > 0 || b.clients > 0) {
			if s = l.own[b.tenant]; s == nil {
				s = l.seriesOf(b.tenant)
			}
			own[b.tenant] = s
		}
		b.t.series.Store(s)
		if b.measured {
			spreads[b.t.tier] = append(spreads[b.t.tier], b.p99)
		}
	}
	for tenant := range l.own {
		if own[tenant] == nil {
			l.m.forget(tenant)
		}
	}
	l.own, l.rankedAt = own, now
	l.p99s = make(map[string]tierSpread, len(spreads))
	for tier, p99s := range spreads {
		l.p99s[tier] = spreadOf(p99s)
	}
}

// forget removes tenant's series from every per-tenant metric.
func (m *metrics) forget(tenant string) {
	for _, vec := range m.perTenant() {
		vec.DeleteLabelValues(tenant)
	}
	m.txDuration.DeleteLabelValues(tenant)
	m.poolWait.DeleteLabelValues(tenant)
	m.authFailures.DeletePartialMatch(prometheus.Labels{"tenant": tenant})
	m.refusals.DeletePartialMatch(prometheus.Labels{"tenant": tenant})
}

// latencyWindow counts a tenant's transaction times into latencyBuckets
// (the last slot is past the largest) between two rankings, for the
// per-tier spread of p99s: an atomic add per transaction, no lock.
type latencyWindow [len(latencyBuckets) + 1]atomic.Uint64

func (w *latencyWindow) observe(seconds float64) {
	w[sort.SearchFloat64s(latencyBuckets[:], seconds)].Add(1)
}

// minP99Transactions is the fewest transactions in a window whose p99
// says anything: with fewer, the p99 is just the slowest one.
const minP99Transactions = 100

// p99 empties the window and returns the upper bound of the bucket its
// 99th percentile falls in (the largest bound when it falls past it), and
// whether the window had minP99Transactions to measure.
func (w *latencyWindow) p99() (float64, bool) {
	var counts [len(latencyBuckets) + 1]uint64
	var n uint64
	for i := range w {
		counts[i] = w[i].Swap(0)
		n += counts[i]
	}
	if n < minP99Transactions {
		return 0, false
	}
	want := uint64(math.Ceil(0.99 * float64(n)))
	var seen uint64
	for i, c := range counts[:len(latencyBuckets)] {
		if seen += c; seen >= want {
			return latencyBuckets[i], true
		}
	}
	return latencyBuckets[len(latencyBuckets)-1], true
}

// tierSpread is how the p99 transaction times of one tier's tenants
// spread: the lowest, the median and the highest.
type tierSpread struct {
	min, median, max float64
}

func spreadOf(p99s []float64) tierSpread {
	slices.Sort(p99s)
	return tierSpread{min: p99s[0], median: p99s[len(p99s)/2], max: p99s[len(p99s)-1]}
}

// tenantCollector exports what is summed per label value at a scrape
// rather than counted into a series: the per-tenant gauges, from each
// tenant's own atomic counts, so that a tenant changing label moves its
// clients with it; how close tenants are to their connection limits; and
// the per-tier spreads of p99s. A scrape due for a ranking
// (Config.MetricsRankInterval) ranks first.
type tenantCollector struct {
	s                        *Server
	clients, pinned          *prometheus.Desc
	limitUsage               *prometheus.Desc
	tierP99, tierSpreadRatio *prometheus.Desc
}

func newTenantCollector(s *Server) *tenantCollector {
	return &tenantCollector{s: s,
		clients: prometheus.NewDesc("tenantproxy_client_connections",
			"Client connections in session, per tenant: the busiest tenants (serve --metrics-tenants) each, the others under tenant=\"other\".", []string{"tenant"}, nil),
		pinned: prometheus.NewDesc("tenantproxy_pinned_connections",
			"Server connections pinned to transaction-mode clients by session state (temporary objects, LISTEN, session advisory locks, SQL PREPARE, WITH HOLD cursors) until they disconnect, per tenant as tenantproxy_client_connections.", []string{"tenant"}, nil),
		limitUsage: prometheus.NewDesc("tenantproxy_tenant_limit_usage_ratio",
			"How much of a connection limit a tenant uses, per tenant as tenantproxy_client_connections (under \"other\": the highest of those tenants) and limit: client_connections (its clients over its cap) and server_connections (the server connections it holds over its share of the pool, the fullest pool); 0 without a limit.", []string{"tenant", "limit"}, nil),
		tierP99: prometheus.NewDesc("tenantproxy_tier_transaction_p99_seconds",
			"Across the tenants of a tier with at least 100 transactions in the last ranking interval, the lowest, median and highest of their own p99 transaction times (across=min|median|max), each the upper bound of its latency bucket.", []string{"tier", "across"}, nil),
		tierSpreadRatio: prometheus.NewDesc("tenantproxy_tier_transaction_p99_spread_ratio",
			"The highest tenant p99 transaction time of a tier divided by the median one (tenantproxy_tier_transaction_p99_seconds): 1 when the tier's tenants fare alike, large when one tenant's transactions are much slower than its neighbours'.", []string{"tier"}, nil),
	}
}

func (c *tenantCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.clients
	ch <- c.pinned
	ch <- c.limitUsage
	ch <- c.tierP99
	ch <- c.tierSpreadRatio
}

// labelSums are what tenantCollector sums per label value.
type labelSums struct {
	clients, pinned int64
	// clientUse and serverUse are the highest usage ratios of the
	// label's tenants.
	clientUse, serverUse float64
}

// poolStats is what the collector needs of Backends for the server
// connections' usage: pool.Manager has it.
type poolStats interface{ Stats() pool.Stats }

func (c *tenantCollector) Collect(ch chan<- prometheus.Metric) {
	sums, spreads := c.sums()
	for label, sum := range sums {
		ch <- prometheus.MustNewConstMetric(c.clients, prometheus.GaugeValue, float64(sum.clients), label)
		ch <- prometheus.MustNewConstMetric(c.pinned, prometheus.GaugeValue, float64(sum.pinned), label)
		ch <- prometheus.MustNewConstMetric(c.limitUsage, prometheus.GaugeValue, sum.clientUse, label, "client_connections")
		ch <- prometheus.MustNewConstMetric(c.limitUsage, prometheus.GaugeValue, sum.serverUse, label, "server_connections")
	}
	for tier, sp := range spreads {
		ch <- prometheus.MustNewConstMetric(c.tierP99, prometheus.GaugeValue, sp.min, tier, "min")
		ch <- prometheus.MustNewConstMetric(c.tierP99, prometheus.GaugeValue, sp.median, tier, "median")
		ch <- prometheus.MustNewConstMetric(c.tierP99, prometheus.GaugeValue, sp.max, tier, "max")
		ch <- prometheus.MustNewConstMetric(c.tierSpreadRatio, prometheus.GaugeValue, sp.max/sp.median, tier)
	}
}

// sums ranks if a ranking is due, and sums the tenants' counts per label
// value.
func (c *tenantCollector) sums() (map[string]*labelSums, map[string]tierSpread) {
	s := c.s
	sums := map[string]*labelSums{otherTenants: {}}
	labels := make(map[string]string)
	s.mu.Lock()
	if now := time.Now(); now.Sub(s.labels.rankedAt) >= s.labels.interval {
		s.labels.rank(s.times, now)
	}
	for tenant, t := range s.times {
		label := t.series.Load().label
		labels[tenant] = label
		sum := sums[label]
		if sum == nil {
			sum = &labelSums{}
			sums[label] = sum
		}
		n := t.clients.Load()
		sum.clients += n
		sum.pinned += t.pinned.Load()
		if t.clientCap > 0 {
			sum.clientUse = max(sum.clientUse, float64(n)/float64(t.clientCap))
		}
	}
	// rank replaces the map, never writes into it.
	spreads := s.labels.p99s
	s.mu.Unlock()
	if ps, ok := s.backends.(poolStats); ok {
		for _, share := range ps.Stats().Tenants {
			if sum := sums[cmp.Or(labels[share.Tenant], otherTenants)]; share.Cap > 0 {
				sum.serverUse = max(sum.serverUse, float64(share.Held)/float64(share.Cap))
			}
		}
	}
	return sums, spreads
}
