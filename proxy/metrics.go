package proxy

import (
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/pool"
)

// metrics are per tenant, with a bounded set of tenant label values
// (tenantlabels.go): the busiest tenants each, and "other". The gauges per
// tenant are summed at a scrape (tenantCollector).
type metrics struct {
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
	// queryDuration has no tenant label: one transaction's statements
	// tell an operator little more per tenant than the transaction does.
	queryDuration prometheus.Histogram
	// txDuration and poolWait are per tenant label value.
	txDuration, poolWait *prometheus.HistogramVec
	// refusals count what a tenant's limits refused, by reason.
	refusals *prometheus.CounterVec
	// held is the time transactions waited for their tenant's server time.
	held *prometheus.CounterVec
	// quota are the storage quota's (quota.go).
	quota *quotaMetrics
}

// perTenant are the counters of a tenantSeries, in its order.
func (m *metrics) perTenant() [numCounters]*prometheus.CounterVec {
	return [numCounters]*prometheus.CounterVec{countQueries: m.queries, countTransactions: m.transactions,
		countReceived: m.clientReceived, countSent: m.clientSent, countHeld: m.held}
}

// latencyBuckets span a sub-millisecond query on a warm connection to a
// transaction left open for half a minute.
// An array, so that a latencyWindow's length is a constant.
var latencyBuckets = [...]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// newMetrics builds the proxy's metrics; buffered reads the bytes held
// for long client messages.
func newMetrics(reg prometheus.Registerer, buffered func() float64) (*metrics, error) {
	m := &metrics{
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
			Buckets: latencyBuckets[:],
		}),
		txDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tenantproxy_transaction_duration_seconds",
			Help:    "Time from a transaction's first Query or Sync to the ReadyForQuery that leaves the session idle, in both pool modes, per tenant: the busiest tenants (serve --metrics-tenants) each, the others under tenant=\"other\".",
			Buckets: latencyBuckets[:],
		}, []string{"tenant"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_tenant_refusals_total",
			Help: "Requests a tenant's limits refused, per tenant as tenantproxy_transactions_total and reason: transactions_per_second (over its rate, 53400), pool_wait (no server connection within the pool's wait, often its share full, 53400), client_connections (a login over its cap, 53300).",
		}, []string{"tenant", "reason"}),
		held: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_tenant_server_time_wait_seconds_total",
			Help: "Time a tenant's transactions waited because it was over its server_time_per_second (each at most 1 s; they then run), per tenant as tenantproxy_transactions_total.",
		}, []string{"tenant"}),
		poolWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tenantproxy_tenant_pool_wait_seconds",
			Help: "Time a tenant's session waited for a server connection (the pool's wait and its share's), per tenant as tenantproxy_transaction_duration_seconds; counted once per session in session mode, once per transaction in transaction mode.",
			// From a free connection (0) to the longest pool timeouts.
			Buckets: append([]float64{0}, latencyBuckets[:]...),
		}, []string{"tenant"}),
	}
	m.quota = newQuotaMetrics()
	for _, c := range append([]prometheus.Collector{m.queries, m.transactions, m.authFailures, m.startupClosed, m.buffered, m.loginsDelayed,
		m.clientReceived, m.clientSent, m.queryDuration, m.txDuration, m.poolWait, m.refusals, m.held}, m.quota.collectors()...) {
		if err := register(reg, c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// register registers c with reg, if any. One registered by an earlier
// Server in the process (tests) is no error.
func register(reg prometheus.Registerer, c prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	var are prometheus.AlreadyRegisteredError
	if err := reg.Register(c); err != nil && !errors.As(err, &are) {
		return err
	}
	return nil
}

// Reasons of tenantproxy_tenant_refusals_total.
const (
	refusedRate     = "transactions_per_second"
	refusedPoolWait = "pool_wait"
	refusedClients  = "client_connections"
)

// countRefusal counts err against tenant when one of its limits refused
// the request: its rate, the pool's wait or its client cap. Other errors
// (the client gone, shutdown) are not counted.
func (s *Server) countRefusal(tenant string, err error) {
	reason := ""
	var pe *pgerr.Error
	var ol *overLimit
	switch {
	case errors.As(err, &ol):
		reason = ol.reason
	case errors.Is(err, pool.ErrWaitTimeout):
		reason = refusedPoolWait
	case !errors.As(err, &pe):
		return
	case pe.Code == pgerr.CodeTooManyConnections:
		reason = refusedClients
	default:
		return
	}
	s.metrics.refusals.WithLabelValues(s.labelOf(tenant), reason).Inc()
}

// labelOf is the tenant label value tenant's metrics count under.
func (s *Server) labelOf(tenant string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.labels.labelOf(tenant)
}

// tenantTimes are a tenant's totals for the console's SHOW STATS and for
// metering, and what its metrics count into. Each session holds its
// tenant's entry (sessionBase.times), looked up once at its start, so
// counting is atomic adds and loads with no lookup, lock or allocation.
type tenantTimes struct {
	// query, xact and wait are microseconds, as PgBouncer reports them.
	query, xact, wait atomic.Uint64
	// assignments counts server connections bound to a client: one per
	// session-mode session, one per transaction in transaction mode.
	assignments atomic.Uint64
	// totals are the tenant's usage (Server.Usage), by the tenantSeries
	// counter they are counted with (tallied).
	totals [numCounters]atomic.Uint64
	// series are the series of the tenant's label value, swapped by a
	// ranking (tenantLabels).
	series atomic.Pointer[tenantSeries]
	// clients and pinned are its sessions and pinned server connections
	// (tenantCollector).
	clients, pinned atomic.Int64
	// window times its transactions for the per-tier spread of p99s.
	window latencyWindow
	// tier and clientCap (0: none) are the tenant's when a session of it
	// last started, and rankedXacts its transactions at the last ranking;
	// all under Server.mu.
	tier        string
	clientCap   int64
	rankedXacts uint64
}

// assigned counts a server connection bound after waiting since start.
func (t *tenantTimes) assigned(start time.Time) {
	d := time.Since(start)
	t.assignments.Add(1)
	t.wait.Add(micros(d))
	t.series.Load().waitTime.Observe(d.Seconds())
}

// transacted counts a transaction that took d.
func (t *tenantTimes) transacted(d time.Duration) {
	t.xact.Add(micros(d))
	t.series.Load().txTime.Observe(d.Seconds())
	t.window.observe(d.Seconds())
}

// tally is the tenant's counter which (countQueries …).
func (t *tenantTimes) tally(which int) tallied { return tallied{t: t, which: which} }

func micros(d time.Duration) uint64 { return uint64(max(d, 0) / time.Microsecond) }

// meteredConn counts a tenant's client bytes each way. The relay reads
// and writes a batch of messages at a time, so this is one atomic add per
// batch, never per message, and nothing is allocated.
type meteredConn struct {
	net.Conn
	received, sent tallied
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
