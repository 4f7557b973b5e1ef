package catalog

import (
	"errors"

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
