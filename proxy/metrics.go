package proxy

import (
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are per tenant. Tenants are a bounded, operator-created set, so
// the label is fine for now; a cap on label values can come with scale.
type metrics struct {
	clients      *prometheus.GaugeVec
	pinned       *prometheus.GaugeVec
	queries      *prometheus.CounterVec
	transactions *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	// startupClosed counts connections closed in start-up by its caps.
	startupClosed *prometheus.CounterVec
	buffered      prometheus.GaugeFunc
	// loginsDelayed has no tenant label: strangers name the tenants.
	loginsDelayed prometheus.Counter
	// Bytes relayed from and to clients, per tenant.
	clientReceived, clientSent *prometheus.CounterVec
	// The latency histograms have no tenant label: buckets times tenants
	// would be too many series.
	queryDuration, txDuration prometheus.Histogram
	// quota are the storage quota's (quota.go).
	quota *quotaMetrics
}

// latencyBuckets span a sub-millisecond query on a warm connection to a
// transaction left open for half a minute.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// newMetrics builds the proxy's metrics; buffered reads the bytes held
// for long client messages.
func newMetrics(reg prometheus.Registerer, buffered func() float64) (*metrics, error) {
	m := &metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tenantproxy_client_connections",
			Help: "Client connections in session, per tenant.",
		}, []string{"tenant"}),
		pinned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tenantproxy_pinned_connections",
			Help: "Server connections pinned to transaction-mode clients by session state (temporary objects, LISTEN, session advisory locks, SQL PREPARE, WITH HOLD cursors) until they disconnect, per tenant.",
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
		clientReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_client_received_bytes_total",
			Help: "Bytes read from tenants' clients after their start-up, per tenant.",
		}, []string{"tenant"}),
		clientSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_client_sent_bytes_total",
			Help: "Bytes written to tenants' clients after their start-up, per tenant.",
		}, []string{"tenant"}),
		queryDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tenantproxy_query_duration_seconds",
			Help:    "Time from a client's Query or Sync to its ReadyForQuery (for pipelined ones, from the previous ReadyForQuery), all tenants together: no tenant label, to bound the series.",
			Buckets: latencyBuckets,
		}),
		txDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tenantproxy_transaction_duration_seconds",
			Help:    "Time from a transaction's first Query or Sync to the ReadyForQuery that leaves the session idle, in both pool modes, all tenants together: no tenant label, to bound the series.",
			Buckets: latencyBuckets,
		}),
	}
	m.quota = newQuotaMetrics()
	if reg == nil {
		return m, nil
	}
	for _, c := range append([]prometheus.Collector{m.clients, m.pinned, m.queries, m.transactions, m.authFailures, m.startupClosed, m.buffered, m.loginsDelayed,
		m.clientReceived, m.clientSent, m.queryDuration, m.txDuration}, m.quota.collectors()...) {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	return m, nil
}

// tenantTimes are a tenant's totals for the console's SHOW STATS, which
// the unlabelled latency histograms cannot give per tenant. Each session
// holds its tenant's entry (sessionBase.times), looked up once at its
// start, so counting is an atomic add with no lookup, lock or allocation.
type tenantTimes struct {
	// query, xact and wait are microseconds, as PgBouncer reports them.
	query, xact, wait atomic.Uint64
	// assignments counts server connections bound to a client: one per
	// session-mode session, one per transaction in transaction mode.
	assignments atomic.Uint64
	// The tenant's usage (Server.Usage), counted with its metrics
	// (tallied).
	xacts, stmts, bytesIn, bytesOut atomic.Uint64
}

// assigned counts a server connection bound after waiting since start.
func (t *tenantTimes) assigned(start time.Time) {
	t.assignments.Add(1)
	t.wait.Add(micros(time.Since(start)))
}

func micros(d time.Duration) uint64 { return uint64(max(d, 0) / time.Microsecond) }

// meteredConn counts a tenant's client bytes each way. The relay reads
// and writes a batch of messages at a time, so this is one atomic add per
// batch, never per message, and nothing is allocated.
type meteredConn struct {
	net.Conn
	received, sent prometheus.Counter
}

func (c *meteredConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.received.Add(float64(n))
	}
	return n, err
}

func (c *meteredConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.sent.Add(float64(n))
	}
	return n, err
}

// unmetered returns the connection under a meteredConn.
func unmetered(c net.Conn) net.Conn {
	if m, ok := c.(*meteredConn); ok {
		return m.Conn
	}
	return c
}
