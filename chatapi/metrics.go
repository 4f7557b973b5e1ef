package chatapi

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are per route and tenant. Only the tenants of Config.
// MetricTenants get their own label value; the rest share "other", so a
// platform with a million tenants still exports a bounded set of series.
type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	pools    prometheus.Gauge
	named    map[string]bool
}

func newMetrics(reg prometheus.Registerer, tenants []string) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_chatapi_requests_total",
			Help: "HTTP requests served by the chat API, by route, tenant (opt-in list, else other) and status code.",
		}, []string{"route", "tenant", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tenantproxy_chatapi_request_duration_seconds",
			Help:    "Latency of chat API requests, by route and tenant (opt-in list, else other).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route", "tenant"}),
		pools: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tenantproxy_chatapi_tenant_pools",
			Help: "Tenants with an open connection pool to the proxy.",
		}),
		named: map[string]bool{},
	}
	for _, t := range tenants {
		m.named[t] = true
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.pools} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("chatapi: metrics: %w", err)
		}
	}
	return m, nil
}

// tenantLabel bounds the tenant label: "none" before a tenant is known,
// the id for opted-in tenants, "other" for the rest.
func (m *metrics) tenantLabel(tenant string) string {
	switch {
	case tenant == "":
		return "none"
	case m.named[tenant]:
		return tenant
	default:
		return "other"
	}
}

func (m *metrics) observe(route, tenant, code string, took time.Duration) {
	t := m.tenantLabel(tenant)
	m.requests.WithLabelValues(route, t, code).Inc()
	m.latency.WithLabelValues(route, t).Observe(took.Seconds())
}
