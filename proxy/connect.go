package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/router"
)

// Pool modes, for Config.PoolMode and a tenant's catalog setting
// {"pool_mode": "..."}.
const (
	// PoolSession binds one server connection to a client for its whole
	// session (session.go).
	PoolSession = "session"
	// PoolTransaction binds a server connection from a client's first
	// message of a transaction to the ReadyForQuery that ends it (status
	// 'I'), so many clients share few server connections (txsession.go).
	PoolTransaction = "transaction"
)

// poolModeOf returns the tenant's pool mode setting, or def when it names
// none. A malformed or unknown setting falls back to def rather than
// locking the tenant out; both modes isolate tenants.
func poolModeOf(t *catalog.Tenant, def string) string {
	if len(t.Settings) == 0 {
		return def
	}
	var s struct {
		PoolMode string `json:"pool_mode"`
	}
	if json.Unmarshal(t.Settings, &s) != nil {
		return def
	}
	switch s.PoolMode {
	case PoolSession, PoolTransaction:
		return s.PoolMode
	}
	return def
}

// txBackends is what transaction mode needs beyond Backends;
// *pool.Manager has it.
type txBackends interface {
	AcquireTx(ctx context.Context, tt *pool.TxTarget) (*pool.Conn, []byte, int, error)
	AcquireTxReady(ctx context.Context, tt *pool.TxTarget) (*pool.Conn, error)
	ReleaseTx(c *pool.Conn, clean bool)
	Release(c *pool.Conn, reusable bool)
}

var _ txBackends = (*pool.Manager)(nil)

// startupOnlyParams are startup parameters that are not settings.
var startupOnlyParams = map[string]bool{"user": true, "database": true, "options": true, "replication": true}

// establish takes an admitted client from its StartupMessage to its first
// ReadyForQuery: identification, tenant look-up, authentication, the
// tenant's state, the per-tenant cap, routing and a server connection. On
// success the client has been told everything a directly connected client
// would be, with the proxy's cancel key, and the caller owns the session
// (and its slot in the tenant's connection count).
func (s *Server) establish(ctx context.Context, c *clientConn, lv *live, p *startupPacket) (clientSession, error) {
	if r, ok := p.params["replication"]; ok && !isFalse(r) {
		return nil, pgerr.Errorf(pgerr.CodeFeatureNotSupported, "replication connections are not supported through tenantproxy")
	}
	if s.isConsole(p) {
		return s.openConsole(ctx, c, lv, p)
	}
	id, err := router.Identify(lv.cfg.Identify, router.Startup{ServerName: c.serverName, User: p.params["user"], Options: p.params["options"]})
	if err != nil {
		return nil, err
	}
	// Read before the tenant: a move's release after the look-up is
	// noticed (connect).
	epoch := s.moves.epoch(id.Tenant)
	// Nothing about the tenant is told before the client has proved it is
	// one of its users: an unknown tenant fails like a wrong password, after
	// the same exchange, and a suspended or provisioning one says so only
	// after a correct password.
	t, err := s.resolver.Lookup(ctx, id.Tenant)
	if err != nil {
		return nil, err
	}
	if err := s.login(ctx, c, lv, id.Tenant, t, id.User); err != nil {
		return nil, err
	}
	if err := router.Admit(t); err != nil {
		return nil, err
	}
	if err := checkDatabase(lv.cfg.Database, p.params["database"]); err != nil {
		return nil, err
	}
	if err := s.gates.admit(t.Subdomain); err != nil {
		return nil, err
	}
	// Authenticated: a tenant's client now, under the tenant's caps, no
	// longer the start-up caps' (accept.go) to count or evict.
	s.gate.leave(c.slot)
	tl, ok := s.takeSlot(t, lv.cfg.MaxConnsPerTenant)
	if !ok {
		err := pgerr.Errorf(pgerr.CodeTooManyConnections, "too many connections for tenant %q", t.Subdomain)
		s.countRefusal(t.Subdomain, err)
		return nil, err
	}
	ss, err := s.connect(ctx, c, lv, t, tl, id, p, epoch)
	if err != nil {
		s.giveSlot(t.Subdomain)
		return nil, err
	}
	return ss, nil
}

// connect routes the tenant and completes the client's startup in the
// tenant's pool mode.
func (s *Server) connect(ctx context.Context, c *clientConn, lv *live, t *catalog.Tenant, tl *tenantLimits, id router.Identity, p *startupPacket, epoch uint64) (clientSession, error) {
	// A paused tenant's new clients wait for RESUME (or their start-up
	// timeout) before they take a server connection.
	if err := s.gates.wait(ctx, t.Subdomain, s.isClosing, nil); err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return nil, pgerr.Errorf(pgerr.CodeRateLimited, "tenant %q is paused; timed out waiting for RESUME", t.Subdomain)
		}
		return nil, err
	}
	// Held by a move that switched meanwhile: the tenant is elsewhere now.
	t, epoch, err := s.followMoved(ctx, t, epoch)
	if err != nil {
		return nil, err
	}
	rt, err := s.resolver.Route(ctx, t)
	if err != nil {
		return nil, err
	}
	// PostgreSQL applies the "-c" options first and the other parameters
	// after them, so a parameter wins over an option of the same name.
	extra, err := policy.SessionSettings(rt.StartupSettings(append(unnamedApplication(id.Settings, p), startupSettings(p)...)))
	if err != nil {
		return nil, err
	}
	setup := append([]string(nil), rt.Setup...)
	if d := t.Limits.StatementTimeout; d > 0 {
		// The tenant's sessions start with it; settings the client names
		// at start-up come after, as the client's own SET would.
		setup = append(setup, fmt.Sprintf("SET statement_timeout = %d", d.Milliseconds()))
	}
	target := pool.Target{
		Addr: rt.Addr, Database: rt.Database, User: rt.User, Password: rt.Password, TLS: rt.TLS,
		Setup:     append(setup, extra...),
		TenantCap: &tl.serverConns,
	}
	idleLimit := lv.cfg.IdleInTransactionTimeout
	if d := t.Limits.IdleInTransactionTimeout; d > 0 {
		idleLimit = d
	}
	if poolModeOf(t, lv.cfg.PoolMode) == PoolTransaction {
		tx := &txSession{idleTx: idleInTx{limit: idleLimit}, pin: txPin{limit: pinLimit(t, lv.cfg.MaxPinnedPerTenant, s.backends)}}
		s.initBase(&tx.sessionBase, c, t, tl, id, lv)
		tx.channels = rt.Channels
		tx.route.epoch, tx.route.tail = epoch, slices.Clone(target.Setup[len(rt.Setup):])
		return tx, s.connectTx(ctx, c, tx, target)
	}
	// The session's server connection is the tenant's for its whole life:
	// it counts against the tenant's share of the pool
	// (pool.Config.MaxConnsPerTenant), so one tenant's sessions cannot
	// take every connection of a pool other tenants share.
	target.Tenant = t.Subdomain
	// A session holds its server connection for its whole life: its
	// client_connections and the pool's share per tenant bound them, not
	// server_connections, which would turn an app's pool of sessions past
	// it into logins that wait and fail.
	target.TenantCap = nil
	if idleLimit > 0 {
		// PostgreSQL times the session's idle transactions; a client's
		// SET of the setting is held to the limit (policy.CatalogViews).
		target.Setup = append(target.Setup, idleInTxSetting(idleLimit))
	}
	ps := &pinnedSession{idleLimit: idleLimit}
	s.initBase(&ps.sessionBase, c, t, tl, id, lv)
	ps.channels = rt.Channels
	return ps, s.connectPinned(ctx, c, ps, target)
}

// idleInTxSetting sets PostgreSQL's idle_in_transaction_session_timeout
// to d (at least 1 ms: 0 would disable it) for a session-mode session.
func idleInTxSetting(d time.Duration) string {
	return fmt.Sprintf("SET idle_in_transaction_session_timeout = %d", max(d.Milliseconds(), 1))
}

// unnamedApplication is options, the startup packet p's "-c" options,
// led by an empty application_name when neither they nor p name one:
// PostgreSQL gives such a session the empty string, where the pool's
// connections start as "tenantproxy" (pool.Config.ApplicationName), the
// name they show in pg_stat_activity between holders once neutralised
// (RESET ALL goes back to it).
func unnamedApplication(options []router.Setting, p *startupPacket) []router.Setting {
	named := func(s router.Setting) bool { return strings.EqualFold(s.Name, "application_name") }
	if slices.ContainsFunc(options, named) {
		return options
	}
	if _, ok := p.params["application_name"]; ok {
		return options
	}
	return append([]router.Setting{{Name: "application_name"}}, options...)
}

// startupSettings are the startup packet's settings other than the "-c"
// options, sorted, so that the same startup packet always gives the same
// setup.
func startupSettings(p *startupPacket) []router.Setting {
	names := make([]string, 0, len(p.params))
	for name := range p.params {
		if !startupOnlyParams[name] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	settings := make([]router.Setting, 0, len(names))
	for _, name := range names {
		settings = append(settings, router.Setting{Name: name, Value: p.params[name]})
	}
	return settings
}

// initBase sets what both pool modes know of the session starting.
func (s *Server) initBase(b *sessionBase, c *clientConn, t *catalog.Tenant, tl *tenantLimits, id router.Identity, lv *live) {
	rules, err := policy.RulesFor(t)
	if err != nil {
		// RulesFor gave the strictest rules: a bad setting must not lock
		// the tenant out, nor widen what it may do.
		s.log.Warn("tenant policy settings ignored", zap.String("tenant", t.Subdomain), zap.Error(err))
	}
	b.times = s.timesOf(t, clientCap(t, lv.cfg.MaxConnsPerTenant))
	b.meter = meteredConn{Conn: c.conn, received: b.times.tally(countReceived), sent: b.times.tally(countSent)}
	b.srv, b.client, b.rules = s, &b.meter, rules
	b.shared = t.Tier == catalog.TierShared
	b.tenant, b.user, b.started, b.limits = t.Subdomain, id.User, time.Now(), tl
	b.plan = &planSetup{sql: router.PlanSettings(t)}
	b.maxMsg = lv.cfg.MaxMessageSize
	b.queries, b.transactions = b.times.tally(countQueries), b.times.tally(countTransactions)
	b.queryTime = s.metrics.queryDuration
}

// timesOf is tenant's entry of the console's totals, made on first use
// with the series of the label value it is given (tenantLabels.assign);
// clients is its cap on client connections as of now (0: none).
func (s *Server) timesOf(tenant *catalog.Tenant, clients int) *tenantTimes {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.times[tenant.Subdomain]
	if t == nil {
		t = &tenantTimes{}
		t.series.Store(s.labels.assign(tenant.Subdomain))
		s.times[tenant.Subdomain] = t
	}
	t.tier, t.clientCap = string(tenant.Tier), int64(clients)
	return t
}

// connectPinned acquires the session-mode client's server connection for
// the whole session.
func (s *Server) connectPinned(ctx context.Context, c *clientConn, ps *pinnedSession, target pool.Target) error {
	start := time.Now()
	bc, err := s.backends.Acquire(ctx, target)
	if err != nil {
		s.countRefusal(ps.tenant, err)
		return fromPool(err)
	}
	ps.times.assigned(start)
	// Set before the key is published (greet), which orders it before
	// any cancel request's startCancel.
	ps.backend, ps.bconn = bc, bc.NetConn()
	ps.cancelPID, err = s.greet(c, target, serverSettings(bc), ps.tenant, ps)
	if err != nil {
		ps.stopCancels()
		s.backends.Release(bc, true)
		return err
	}
	return nil
}

// connectTx completes a transaction-mode client's startup. A server
// connection is bound only long enough to establish the tenant's context
// and read the settings the client must be told, then goes back to the
// pool still in that context, ready for the client's first transaction.
func (s *Server) connectTx(ctx context.Context, c *clientConn, tx *txSession, target pool.Target) error {
	txb, ok := s.backends.(txBackends)
	if !ok {
		return pgerr.Errorf(pgerr.CodeFeatureNotSupported, "transaction pooling is not available in this proxy")
	}
	// The startup's connection is not the tenant's: a tenant at its cap
	// of held connections can still connect clients.
	bc, err := txb.AcquireTxReady(ctx, pool.NewTxTarget(target))
	if err != nil {
		return fromPool(err)
	}
	msgs := serverSettings(bc)
	txb.ReleaseTx(bc, true)
	// The key reaches a server only while a transaction of the client's
	// runs there (txSession.startCancel).
	tx.cancelPID, err = s.greet(c, target, msgs, tx.tenant, tx)
	if err != nil {
		return err
	}
	target.Tenant = tx.tenant
	tx.backends, tx.target = txb, pool.NewTxTarget(target)
	tx.stmts = newRewriter(tx.target.Key())
	return nil
}

// serverSettings is AuthenticationOk and the server's settings as a
// directly connected client would hear them, read while bc is held.
func serverSettings(bc *pool.Conn) []pgproto3.BackendMessage {
	msgs := []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}}
	for name, value := range bc.ParameterStatuses() {
		msgs = append(msgs, &pgproto3.ParameterStatus{Name: name, Value: value})
	}
	return msgs
}

// greet completes the client's startup: msgs (serverSettings), the
// proxy's cancel key for tenant's session sess, and ReadyForQuery.
func (s *Server) greet(c *clientConn, target pool.Target, msgs []pgproto3.BackendMessage, tenant string, sess canceller) (uint32, error) {
	pid, secret := s.cancels.add(target, tenant, sess)
	msgs = append(msgs, &pgproto3.BackendKeyData{ProcessID: pid, SecretKey: secret[:]}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := c.send(msgs...); err != nil {
		s.cancels.remove(pid)
		return 0, err
	}
	return pid, nil
}

func isFalse(v string) bool {
	switch strings.ToLower(v) {
	case "false", "off", "no", "0":
		return true
	}
	return false
}

// checkDatabase answers a database name other than the one configured
// (want, when set) as PostgreSQL answers a database it lacks, after
// authentication as there. No name means the user's name in PostgreSQL,
// and the configured one here.
func checkDatabase(want, got string) error {
	if want == "" || got == "" || got == want {
		return nil
	}
	return &pgconn.PgError{Severity: "FATAL", Code: "3D000", Message: fmt.Sprintf("database \"%s\" does not exist", got),
		Hint: fmt.Sprintf("Every tenant connects to database \"%s\" through this proxy; the tenant is named by the user, options or TLS server name.", want)}
}
