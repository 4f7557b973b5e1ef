package proxy

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/pgwire"
)

// Storage quota → read-only. A tenant whose measured storage
// (catalog.MeasureStorage) is over its storage_mb is read-only on every
// proxy instance: its limits, refreshed once a second (limits.go), carry
// the figure, so each of its transactions that starts after a change
// sees it.
//
// PostgreSQL enforces it, not the proxy's reading of SQL: the proxy
// starts each of the tenant's transactions read-only, with
// default_transaction_read_only set on the server connection in front of
// the transaction's first message (transaction mode: in the context
// set-up of the binding; session mode: before every transaction, as a
// function may have changed it). A read-only transaction refuses every
// write with 25006 wherever it hides: in a function, a view, a rule, an
// EXECUTE of a prepared statement, the extended protocol. What could make
// a transaction read-write again is refused while the tenant is
// read-only (policy.ReadOnlyFacts.Escape: SET or set_config of
// transaction_read_only or default_transaction_read_only, SET SESSION
// CHARACTERISTICS, BEGIN READ WRITE, CALL and DO, which may COMMIT and go
// on, a COMMIT followed by more statements in one query); a function
// that would change them is refused for every tenant, so none can wait
// for the tenant to become read-only; RESET ALL and DISCARD ALL are
// refused always. Writes the proxy sees (INSERT, UPDATE, COPY FROM,
// CREATE…) it refuses itself, with 25006 and a hint naming the quota.
//
// Deletes: a simple Query made only of DELETE, TRUNCATE and DROP that
// call no function and have no sub-query or WITH (policy
// ReadOnlyFacts.Frees), sent outside a transaction block, runs read-write
// as a transaction of its own, so the tenant can get back under its
// quota; in transaction mode only when nothing else is pipelined behind
// it, so that its binding carries nothing else; in session mode the
// server connection is made read-only again right after it. A trigger or
// rule the tenant created on the tables it deletes from runs as usual in
// that transaction (the README's residual).
//
// Back under the quota, the next transaction starts as it would have:
// transaction mode's read-only bindings leave their connection marked
// unknown, so the next holder resets it (RESET ALL); session mode resets
// default_transaction_read_only.

// The statements the proxy sends to make a server connection's next
// transactions read-only, and no longer.
var (
	readOnlyOn  = queryMessage("SET default_transaction_read_only = on")
	readOnlyOff = queryMessage("RESET default_transaction_read_only")
)

// quotaState is a tenant's standing against its storage quota, as the
// catalog last told this proxy.
type quotaState struct {
	level catalog.QuotaLevel
	// used is the measured storage in bytes (-1: never measured), limit
	// the quota in bytes (0: none).
	used, limit int64
}

func quotaOf(t *catalog.Tenant) *quotaState {
	q := &quotaState{level: catalog.StorageQuota(t.StorageBytes, t.Limits.StorageMB), used: -1, limit: t.Limits.StorageMB << 20}
	if t.StorageBytes != nil {
		q.used = *t.StorageBytes
	}
	return q
}

func (q *quotaState) readOnly() bool { return q != nil && q.level == catalog.QuotaOver }

// refusal is the 25006 error of a read-only tenant's statement.
func (q *quotaState) refusal(tenant, msg string) error {
	return &pgerr.Error{Code: pgerr.CodeReadOnly, Msg: msg,
		Hint: fmt.Sprintf("tenant %q is over its storage quota (%s of %s); delete data or raise storage_mb", tenant, megabytes(q.used), megabytes(q.limit))}
}

func megabytes(b int64) string {
	if b%(1<<20) == 0 {
		return fmt.Sprintf("%d MB", b>>20)
	}
	return fmt.Sprintf("%.1f MB", float64(b)/(1<<20))
}

// quotaTx is how a transaction (session mode) or binding (transaction
// mode) of a tenant runs with respect to its quota.
type quotaTx uint32

const (
	quotaNone     quotaTx = iota // the tenant was writable when it started
	quotaReadOnly                // started read-only in PostgreSQL
	quotaFrees                   // a delete-only Query, run read-write
	// quotaStale: a transaction-mode binding pinned (txpin.go) while its
	// tenant was writable, whose connection the proxy cannot make
	// read-only (its relayer reads it between transactions): while the
	// tenant is read-only it runs nothing, and the client reconnects.
	quotaStale
)

// quotaSession is a session's share of the quota's state.
type quotaSession struct {
	// tx is the quotaTx of the session's current transaction or binding.
	tx atomic.Uint32
	// serverRO (session mode, forwardClient's): the proxy left
	// default_transaction_read_only on on the server connection.
	serverRO bool
}

func (q *quotaSession) kind() quotaTx { return quotaTx(q.tx.Load()) }

// quotaStart decides how a transaction of tl's tenant that starts with a
// client message of type typ (sql: its statement, for a Query) runs.
// alone: nothing else will share the transaction's binding.
func (s *Server) quotaStart(tl *tenantLimits, typ byte, sql []byte, alone bool) quotaTx {
	if !tl.quota.Load().readOnly() {
		return quotaNone
	}
	if typ == pgwire.Query && alone && s.policy.ReadOnly(sql).Frees {
		return quotaFrees
	}
	return quotaReadOnly
}

// quotaRefusal is the error refusing client message m (whole), of type
// typ, in a transaction that runs as kind, or nil: only a Query or Parse
// is judged. A Parse that would prepare a way back to read-write is
// refused for every tenant (policy.PreparedEscape); the rest only read-only
// tenants pay for (a parse of each new text).
func (s *Server) quotaRefusal(tenant string, tl *tenantLimits, kind quotaTx, typ byte, m []byte) error {
	if typ != pgwire.Query && typ != pgwire.Parse {
		return nil
	}
	if typ == pgwire.Parse {
		if r := s.policy.PreparedEscape(pgwire.Statement(m)); r != "" {
			return refused(r)
		}
	}
	q := tl.quota.Load()
	if !q.readOnly() {
		return nil
	}
	f := s.policy.ReadOnly(pgwire.Statement(m))
	switch {
	case kind == quotaStale:
		return q.refusal(tenant, "this client's server connection was pinned to it (session state in transaction mode) before its tenant became read-only: reconnect")
	case kind == quotaFrees && !(typ == pgwire.Query && f.Frees):
		return q.refusal(tenant, "only DELETE, TRUNCATE and DROP may run alongside a delete while the tenant is read-only")
	case f.Escape != "":
		return q.refusal(tenant, f.Escape)
	case f.Write != "":
		return q.refusal(tenant, "cannot execute "+f.Write+" in a read-only transaction")
	case f.Deletes && kind == quotaReadOnly:
		return q.refusal(tenant, "cannot delete in a read-only transaction: while the tenant is read-only, DELETE, TRUNCATE and DROP run only as a simple query of their own, outside a transaction block, without function calls, sub-queries or WITH, and, in transaction mode, from a client not pinned to its server connection by session state")
	}
	return nil
}

// quotaSetup is what transaction mode adds to the set-up of a binding for
// the client message of type typ in tx.in, which starts it: nil, or the
// statement that makes it read-only.
func (tx *txSession) quotaSetup(typ byte) []byte {
	var sql []byte
	if typ == pgwire.Query {
		sql = pgwire.Statement(tx.in)
	}
	// Alone: nothing of the client's is buffered behind it, so the client
	// loop relays its replies inline and the binding ends with it
	// (txclient.go awaitReplies) before another message is read.
	alone := tx.clientScan.Buffered() == 0 && tx.first.empty()
	k := tx.srv.quotaStart(tx.limits, typ, sql, alone)
	tx.quota.tx.Store(uint32(k))
	if k == quotaReadOnly {
		return readOnlyOn
	}
	return nil
}

// quotaKind (transaction mode) is the quotaTx the client's next message
// runs under: the binding's, or quotaStale for a pinned binding that began
// while the tenant was writable.
func (tx *txSession) quotaKind() quotaTx {
	k := tx.quota.kind()
	if k == quotaNone && tx.isPinned() {
		return quotaStale
	}
	return k
}

// quotaAdmit (session mode) takes the tenant's rate for client message m
// (whole) of type typ that may start a transaction, makes the server
// connection fit the transaction's quotaTx if it starts one, and returns
// the error refusing the message, if any. sql is the statement of a
// Query or Parse.
func (ss *pinnedSession) quotaAdmit(sc *pgwire.Scanner, typ byte, m, sql []byte, charged *bool) error {
	starts := ss.startsTx(typ, *charged)
	if err := ss.charge(sc, typ, charged); err != nil {
		return err
	}
	if starts {
		k := ss.srv.quotaStart(ss.limits, typ, sql, true)
		ss.quota.tx.Store(uint32(k))
		var set []byte
		switch {
		case k == quotaReadOnly:
			// Every time: a function may have changed it.
			set, ss.quota.serverRO = readOnlyOn, true
		case ss.quota.serverRO:
			set, ss.quota.serverRO = readOnlyOff, false
		}
		if set != nil {
			if err := ss.injectSetup(sc, set); err != nil {
				return err
			}
		}
	}
	return ss.srv.quotaRefusal(ss.tenant, ss.limits, ss.quota.kind(), typ, m)
}

// quotaAfter (session mode) follows the Query just passed on: after a
// delete run read-write, the connection's next transactions are
// read-only again.
func (ss *pinnedSession) quotaAfter(sc *pgwire.Scanner) error {
	if ss.quota.kind() != quotaFrees {
		return nil
	}
	ss.quota.tx.Store(uint32(quotaReadOnly))
	ss.quota.serverRO = true
	if err := sc.Forward(); err != nil {
		return err
	}
	return ss.injectSetup(sc, readOnlyOn)
}

// injectSetup sends the proxy's own Query m, whose replies the client
// never sees (replyHidden).
func (ss *pinnedSession) injectSetup(sc *pgwire.Scanner, m []byte) error {
	ss.replies.push(reply{kind: replyHidden})
	return sc.Write(m)
}

// hiddenReply reports whether a server message of type typ answers one of
// the proxy's own Queries (replyHidden at the head of the queue), and so
// is dropped; its ReadyForQuery ends the entry. Notifications are
// relayed: they are the client's, whenever they come.
func (q *replyQueue) hiddenReply(typ byte) bool {
	if q.spans.Load() == 0 || typ == pgwire.NotificationResponse {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.q) || q.q[q.head].kind != replyHidden {
		return false
	}
	if typ == pgwire.ReadyForQuery {
		q.popLocked()
	}
	return true
}

// dropHiddenReply drops server message m, a reply to the proxy's own
// Query (hiddenReply). done: the session ends with r, drained now that its
// connection is idle (as backendToClient ends it at a client's
// ReadyForQuery).
func (ss *pinnedSession) dropHiddenReply(sc *pgwire.Scanner, m pgwire.Message) (r backendResult, done bool) {
	idle := m.Type == pgwire.ReadyForQuery && m.Body()[0] == 'I'
	if err := sc.Discard(); err != nil {
		return backendResult{own: true, err: err}, true
	}
	if idle && ss.draining.Load() && ss.replies.owed() == 0 {
		return ss.endWith(sc, errShuttingDown), true
	}
	return backendResult{}, false
}

// applyQuota records t's standing against its quota in tl, and tells of
// a change: the metrics, and a warning when the tenant crosses 80% or
// 100%.
func (s *Server) applyQuota(t *catalog.Tenant, tl *tenantLimits) {
	q := quotaOf(t)
	// Refreshes come every 250 ms per tenant with sessions: the gauges
	// change only with the standing.
	if old := tl.quota.Swap(q); old == nil || *old != *q {
		s.metrics.quota.set(t.Subdomain, q)
	}
	if !s.metrics.quota.crossed(t.Subdomain, q.level) {
		return
	}
	fields := []zap.Field{zap.String("tenant", t.Subdomain), zap.Int64("storage_bytes", q.used), zap.Int64("storage_mb", t.Limits.StorageMB)}
	switch q.level {
	case catalog.QuotaOver:
		s.log.Warn("tenant over its storage quota: read-only until back under", fields...)
	case catalog.QuotaWarning:
		s.log.Warn("tenant over 80% of its storage quota", fields...)
	default:
		s.log.Info("tenant back under its storage quota", fields...)
	}
}

// quotaMetrics are the storage quota's gauges, per tenant with sessions
// on this proxy at or above 80% of its quota: the tenants the alerts are
// about, so that the series stay few however many tenants there are.
type quotaMetrics struct {
	storage, limit, readOnly *prometheus.GaugeVec
	// levels are the levels last logged per tenant, kept while its
	// sessions come and go, so that a tenant over 80% is warned of once
	// per crossing, not once per first session.
	mu     sync.Mutex
	levels map[string]catalog.QuotaLevel
}

func newQuotaMetrics() *quotaMetrics {
	return &quotaMetrics{
		storage: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tenantproxy_tenant_storage_bytes",
			Help: "A tenant's storage as last measured (database, schema, or its estimated share of the shared tables), per tenant with sessions here; absent until measured.",
		}, []string{"tenant"}),
		limit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tenantproxy_tenant_storage_limit_bytes",
			Help: "A tenant's storage quota (its storage_mb limit), per tenant with sessions here; absent for no quota.",
		}, []string{"tenant"}),
		readOnly: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tenantproxy_read_only_tenants",
			Help: "1 for a tenant that is read-only here because it is over its storage quota, else 0, per tenant with sessions here.",
		}, []string{"tenant"}),
	}
}

// crossed records level as tenant's and reports whether it differs from
// the one before (catalog.QuotaUnder for a tenant never seen).
func (m *quotaMetrics) crossed(tenant string, level catalog.QuotaLevel) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.levels[tenant] == level {
		return false
	}
	if m.levels == nil {
		m.levels = make(map[string]catalog.QuotaLevel)
	}
	m.levels[tenant] = level
	return true
}

func (m *quotaMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.storage, m.limit, m.readOnly}
}

func (m *quotaMetrics) set(tenant string, q *quotaState) {
	if q.level == catalog.QuotaUnder {
		m.forget(tenant)
		return
	}
	if q.used >= 0 {
		m.storage.WithLabelValues(tenant).Set(float64(q.used))
	} else {
		m.storage.DeleteLabelValues(tenant)
	}
	if q.limit > 0 {
		m.limit.WithLabelValues(tenant).Set(float64(q.limit))
	} else {
		m.limit.DeleteLabelValues(tenant)
	}
	ro := 0.0
	if q.readOnly() {
		ro = 1
	}
	m.readOnly.WithLabelValues(tenant).Set(ro)
}

// forget removes a tenant's series: its last session here ended.
func (m *quotaMetrics) forget(tenant string) {
	for _, g := range []*prometheus.GaugeVec{m.storage, m.limit, m.readOnly} {
		g.DeleteLabelValues(tenant)
	}
}
