package catalog

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// lookupCounters count one look-up cache's answers by result.
type lookupCounters struct {
	// hit: a trusted entry answered; miss: the control database was read;
	// stale: it could not be, and the last known entry answered (cached).
	hit, miss, stale prometheus.Counter
}

// lookupMetrics builds the counters of the tenants, users and backends
// caches and registers them with reg (nil: counted, exported nowhere).
// A catalog opened again on the same registry (serve retrying a catalog
// that is down) adopts the series already registered.
func lookupMetrics(reg prometheus.Registerer) (tenants, users, backends lookupCounters, err error) {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tenantproxy_catalog_cache_lookups_total",
		Help: "Catalog look-ups by cache (tenants, users, backends) and result: hit (a trusted cached entry), miss (read from the control database) or stale (the control database could not be read; the last known entry answered).",
	}, []string{"cache", "result"})
	if reg != nil {
		if err := reg.Register(vec); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return tenants, users, backends, err
			}
			existing, ok := already.ExistingCollector.(*prometheus.CounterVec)
			if !ok {
				return tenants, users, backends, err
			}
			vec = existing
		}
	}
	of := func(cache string) lookupCounters {
		return lookupCounters{
			hit:   vec.WithLabelValues(cache, "hit"),
			miss:  vec.WithLabelValues(cache, "miss"),
			stale: vec.WithLabelValues(cache, "stale"),
		}
	}
	return of("tenants"), of("users"), of("backends"), nil
}

// tenantsCollector reports the catalog's tenants at a scrape, per tier
// and status, read from the control database (the caches know only the
// tenants looked up): what the alert on a newly provisioned tenant
// compares over time. A catalog opened again on the same registry takes
// over the collector registered first.
type tenantsCollector struct {
	cat  atomic.Pointer[Catalog]
	desc *prometheus.Desc
}

func registerTenantsCollector(reg prometheus.Registerer, c *Catalog) error {
	if reg == nil {
		return nil
	}
	tc := &tenantsCollector{desc: prometheus.NewDesc("tenantproxy_catalog_tenants",
		"Tenants in the catalog, by tier and status (provisioning, active, suspended), read at the scrape; every instance reports the same catalog.",
		[]string{"tier", "status"}, nil)}
	tc.cat.Store(c)
	err := reg.Register(tc)
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(*tenantsCollector); ok {
			existing.cat.Store(c)
			return nil
		}
	}
	return err
}

func (tc *tenantsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- tc.desc }

// Collect reports nothing when the control database cannot be read in
// time: a missing series, not a false count.
func (tc *tenantsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rows, err := tc.cat.Load().db.Query(ctx, "SELECT isolation_level, status, count(*) FROM tenants GROUP BY 1, 2")
	if err != nil {
		return
	}
	defer rows.Close()
	for rows.Next() {
		var tier, status string
		var n int64
		if rows.Scan(&tier, &status, &n) == nil {
			ch <- prometheus.MustNewConstMetric(tc.desc, prometheus.GaugeValue, float64(n), tier, status)
		}
	}
}
