package proxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are per tenant. Tenants are a bounded, operator-created set, so
// the label is fine for now; a cap on label values can come with scale.
type metrics struct {
	clients      *prometheus.GaugeVec
	queries      *prometheus.CounterVec
	transactions *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	// startupClosed counts connections closed in start-up by its caps.
	startupClosed *prometheus.CounterVec
	buffered      prometheus.GaugeFunc
	// loginsDelayed has no tenant label: strangers name the tenants.
	loginsDelayed prometheus.Counter
}

// newMetrics builds the proxy's metrics; buffered reads the bytes held
// for long client messages.
func newMetrics(reg prometheus.Registerer, buffered func() float64) (*metrics, error) {
	m := &metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tenantproxy_client_connections",
			Help: "Client connections in session, per tenant.",
		}, []string{"tenant"}),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_queries_total",
			Help: "Queries relayed (simple Query and extended Execute messages), per tenant.",
		}, []string{"tenant"}),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_transactions_total",
			Help: "Transactions ended (ReadyForQuery returning to idle), per tenant.",
		}, []string{"tenant"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_auth_failures_total",
			Help: "Failed client logins, per tenant and reason: password (wrong password or unknown user), unknown_tenant and console (admin console logins), both under tenant \"\".",
		}, []string{"tenant", "reason"}),
		startupClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_startup_connections_closed_total",
			Help: "Connections closed before authentication by the start-up caps, per reason (address_cap: refused over the per-address cap; evicted: the oldest closed at the total cap).",
		}, []string{"reason"}),
		buffered: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tenantproxy_buffered_message_bytes",
			Help: "Memory held for client messages over 64 KiB read whole, as charged against MaxBufferedBytes (transaction mode counts a message twice).",
		}, buffered),
		loginsDelayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tenantproxy_login_delayed_total",
			Help: "Login attempts held because their source address failed too often recently (the login throttle).",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.clients, m.queries, m.transactions, m.authFailures, m.startupClosed, m.buffered, m.loginsDelayed} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	return m, nil
}
