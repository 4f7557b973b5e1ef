package proxy

import (
	"context"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/router"
)

// startupOnlyParams are startup parameters that are not settings.
var startupOnlyParams = map[string]bool{"user": true, "database": true, "options": true, "replication": true}

// establish takes an admitted client from its StartupMessage to its first
// ReadyForQuery: identification, tenant look-up, authentication, the
// per-tenant cap, routing and a server connection. On success the client
// has been told everything a directly connected client would be, with the
// proxy's cancel key, and the caller owns the session (and its slot in the
// tenant's connection count).
func (s *Server) establish(ctx context.Context, c *clientConn, lv *live, p *startupPacket) (*session, error) {
	if r, ok := p.params["replication"]; ok && !isFalse(r) {
		return nil, pgerr.Errorf(pgerr.CodeFeatureNotSupported, "replication connections are not supported through tenantproxy")
	}
	id, err := router.Identify(lv.cfg.Identify, router.Startup{ServerName: c.serverName, User: p.params["user"], Options: p.params["options"]})
	if err != nil {
		return nil, err
	}
	t, err := s.resolver.Tenant(ctx, id.Tenant)
	if err != nil {
		return nil, err
	}
	if err := s.login(ctx, c, lv, t, id.User); err != nil {
		return nil, err
	}
	if !s.takeSlot(t.Subdomain, lv.cfg.MaxConnsPerTenant) {
		return nil, pgerr.Errorf(pgerr.CodeTooManyConnections, "too many connections for tenant %q", t.Subdomain)
	}
	ss, err := s.connect(ctx, c, lv, t, id, p)
	if err != nil {
		s.giveSlot(t.Subdomain)
		return nil, err
	}
	return ss, nil
}

// connect routes the tenant, acquires its server connection and completes
// the client's startup.
func (s *Server) connect(ctx context.Context, c *clientConn, lv *live, t *catalog.Tenant, id router.Identity, p *startupPacket) (*session, error) {
	rt, err := s.resolver.Route(ctx, t)
	if err != nil {
		return nil, err
	}
	// Startup parameters first, then "-c" options, as PostgreSQL applies
	// them; parameters sorted so the same startup packet always gives the
	// same setup.
	var settings []router.Setting
	names := make([]string, 0, len(p.params))
	for name := range p.params {
		if !startupOnlyParams[name] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		settings = append(settings, router.Setting{Name: name, Value: p.params[name]})
	}
	extra, err := policy.SessionSettings(append(settings, id.Settings...))
	if err != nil {
		return nil, err
	}
	target := pool.Target{
		Addr: rt.Addr, Database: rt.Database, User: rt.User, Password: rt.Password, TLS: rt.TLS,
		Setup: append(append([]string(nil), rt.Setup...), extra...),
	}
	if poolModeOf(t, lv.cfg.PoolMode) == PoolTransaction {
		return s.connectTx(ctx, c, lv, t, id, target)
	}
	bc, err := s.backends.Acquire(ctx, target)
	if err != nil {
		var setupErr *pool.SetupError
		if errors.Is(err, pool.ErrWaitTimeout) || errors.Is(err, pool.ErrClosed) || errors.As(err, &setupErr) {
			return nil, err
		}
		return nil, &pgerr.Error{Code: pgerr.CodeBackendUnavailable, Msg: "could not connect to the tenant's server", Err: err}
	}
	pid, secret := s.cancels.add(target, bc.PID(), bc.SecretKey())
	msgs := []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}}
	for name, value := range bc.ParameterStatuses() {
		msgs = append(msgs, &pgproto3.ParameterStatus{Name: name, Value: value})
	}
	msgs = append(msgs, &pgproto3.BackendKeyData{ProcessID: pid, SecretKey: secret[:]}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := c.send(msgs...); err != nil {
		s.cancels.remove(pid)
		s.backends.Release(bc, true)
		return nil, err
	}
	rules, err := policy.RulesFor(t)
	if err != nil {
		// RulesFor gave the strictest rules: a bad setting must not lock
		// the tenant out, nor widen what it may do.
		s.log.Warn("tenant policy settings ignored", zap.String("tenant", t.Subdomain), zap.Error(err))
	}
	return &session{
		srv: s, client: c.conn, backend: bc, bconn: bc.NetConn(),
		tenant: t.Subdomain, user: id.User, rules: rules, started: time.Now(), cancelPID: pid,
		maxMsg:       lv.cfg.MaxMessageSize,
		queries:      s.metrics.queries.WithLabelValues(t.Subdomain),
		transactions: s.metrics.transactions.WithLabelValues(t.Subdomain),
	}, nil
}

// run relays until the session ends, then returns the server connection
// to the pool (for reuse only when the client left it clean) and logs
// the session.
func (ss *session) run() {
	if ss.tx != nil {
		ss.tx.run()
		return
	}
	s := ss.srv
	gauge := s.metrics.clients.WithLabelValues(ss.tenant)
	gauge.Inc()
	defer gauge.Dec()
	done := make(chan clientResult, 1)
	go func() { done <- ss.clientToBackend() }()
	b := ss.backendToClient()
	if b.own {
		// Unblock clientToBackend: its read from the client, or its write
		// to a server that stopped reading.
		ss.client.Close()
		ss.bconn.SetWriteDeadline(time.Unix(1, 0))
	}
	c := <-done
	reusable := !b.own && b.clean && c.clean
	s.cancels.remove(ss.cancelPID)
	ss.bconn.SetDeadline(time.Time{})
	s.backends.Release(ss.backend, reusable)
	s.giveSlot(ss.tenant)
	reason := b.err
	if reason == nil {
		reason = c.err
	}
	s.log.Info("session ended", zap.String("tenant", ss.tenant), zap.String("user", ss.user),
		zap.Stringer("client", ss.client.RemoteAddr()), zap.Duration("duration", time.Since(ss.started)),
		zap.Bool("server_reused", reusable), zap.NamedError("reason", reason))
}

func isFalse(v string) bool {
	switch strings.ToLower(v) {
	case "false", "off", "no", "0":
		return true
	}
	return false
}
