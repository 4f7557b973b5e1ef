package pool

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are labelled by database and user only: the address would
// multiply series by backends without telling an operator more, and two
// pools that share database and user simply add up (gauges move by deltas).
type metrics struct {
	conns    *prometheus.GaugeVec
	connects *prometheus.CounterVec
	waiting  *prometheus.GaugeVec
	// wait has no label at all: its buckets times databases and users
	// would be too many series.
	wait prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tenantproxy_server_connections",
			Help: "Server connections held by the pool, by state (idle or active).",
		}, []string{"database", "user", "state"}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_server_connects_total",
			Help: "Attempts to open a server connection, by result (ok or error).",
		}, []string{"database", "user", "result"}),
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tenantproxy_server_connection_waiters",
			Help: "Acquires waiting for a server connection of a full pool or of a tenant at its cap.",
		}, []string{"database", "user"}),
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tenantproxy_pool_wait_seconds",
			Help: "Time an acquire of a server connection waited for one (0 when one was free), granted or not, all pools together: no labels, to bound the series.",
			// From a free connection (0) to the longest pool timeouts.
			Buckets: []float64{0, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.conns, err = register(reg, m.conns); err != nil {
		return nil, err
	}
	if m.connects, err = register(reg, m.connects); err != nil {
		return nil, err
	}
	if m.waiting, err = register(reg, m.waiting); err != nil {
		return nil, err
	}
	if m.wait, err = register(reg, m.wait); err != nil {
		return nil, err
	}
	return m, nil
}

// register adopts the collector an earlier Manager registered, so a
// Manager rebuilt on config reload keeps counting into the same series.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

// keyMetrics are one pool's series, looked up once so the hot path does not
// hash label values.
type keyMetrics struct {
	idle, active, waiting    prometheus.Gauge
	connectsOK, connectsFail prometheus.Counter
	wait                     prometheus.Observer
}

func (m *metrics) forKey(database, user string) keyMetrics {
	return keyMetrics{
		idle:         m.conns.WithLabelValues(database, user, "idle"),
		active:       m.conns.WithLabelValues(database, user, "active"),
		connectsOK:   m.connects.WithLabelValues(database, user, "ok"),
		connectsFail: m.connects.WithLabelValues(database, user, "error"),
		waiting:      m.waiting.WithLabelValues(database, user),
		wait:         m.wait,
	}
}
