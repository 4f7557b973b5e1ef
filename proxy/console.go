package proxy

import (
	"context"
	"crypto/tls"
	"maps"
	"net"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/console"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// consoleKey is the login throttle's key for console logins: no tenant's
// subdomain can be empty.
const consoleKey = ""

var _ console.Proxy = (*Server)(nil)

// isConsole reports whether the start-up packet asks for the admin
// console: only when one is configured, else the virtual database names
// are like any other.
func (s *Server) isConsole(p *startupPacket) bool {
	return s.console != nil && console.IsDatabase(p.params["database"])
}

// openConsole authenticates the console user with SCRAM (a tenant's
// users are not looked at: their credentials never open the console) and
// returns the session that runs the console.
func (s *Server) openConsole(ctx context.Context, c *clientConn, lv *live, p *startupPacket) (clientSession, error) {
	name := p.params["user"]
	if name == "" {
		return nil, pgerr.Errorf(pgerr.CodeNoUser, "no PostgreSQL user name specified in startup packet")
	}
	v, ok := s.console.Verifier(name)
	if !ok {
		v = s.verifierFor(consoleKey, nil, name, nil)
	}
	auth := func() error { return s.scramExchange(c, v, name) }
	failed := func(held time.Duration) {
		s.metrics.authFailures.WithLabelValues("", "console").Inc()
		s.log.Info("console login failed", zap.String("user", name), zap.Stringer("client", c.raw.RemoteAddr()), zap.Duration("held", held))
	}
	if err := s.throttled(ctx, c, lv, consoleKey, name, auth, failed); err != nil {
		return nil, err
	}
	s.gate.leave(c.slot)
	s.log.Info("console login", zap.String("user", name), zap.Stringer("client", c.raw.RemoteAddr()))
	return &consoleSession{srv: s, conn: c.conn, user: name, database: p.params["database"], started: time.Now()}, nil
}

// consoleSession is an operator's console connection past its login.
type consoleSession struct {
	srv            *Server
	conn           net.Conn
	user, database string
	started        time.Time
}

var _ clientSession = (*consoleSession)(nil)

func (cs *consoleSession) run(closed func()) {
	defer closed()
	err := cs.srv.console.Serve(cs.srv.ctx, cs.conn, cs.srv)
	cs.srv.log.Info("console session ended", zap.String("user", cs.user), zap.Stringer("client", cs.conn.RemoteAddr()),
		zap.Duration("duration", time.Since(cs.started)), zap.NamedError("reason", err))
}

// drain ends the console at its next read: it holds nothing to finish.
func (cs *consoleSession) drain() { cs.conn.SetReadDeadline(pastDeadline) }

func (cs *consoleSession) kill() { cs.conn.SetDeadline(pastDeadline) }

// Clients lists the sessions past their login, console ones included.
func (s *Server) Clients() []console.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []console.Client
	for t := range s.conns {
		switch ss := t.sess.(type) {
		case *consoleSession:
			out = append(out, clientOf(ss.conn, ss.user, ss.database, ss.started, 0))
		case tenantSession:
			b := ss.base()
			cl := clientOf(b.client, b.user, b.tenant, b.started, b.cancelPID)
			cl.Waiting = b.held.Load()
			if tx, ok := ss.(*txSession); ok {
				cl.Link = tx.pinnedPID()
			}
			out = append(out, cl)
		}
	}
	return out
}

func clientOf(conn net.Conn, user, database string, started time.Time, id uint32) console.Client {
	_, isTLS := unmetered(conn).(*tls.Conn)
	return console.Client{User: user, Database: database, Addr: conn.RemoteAddr(), LocalAddr: conn.LocalAddr(),
		ConnectTime: started, RequestTime: started, TLS: isTLS, ID: id}
}

// TenantStates reports every tenant with clients, queries, a pause or a
// disable.
func (s *Server) TenantStates() map[string]console.TenantState {
	s.mu.Lock()
	clients := maps.Clone(s.perTenant)
	times := maps.Clone(s.times)
	s.mu.Unlock()
	s.gates.mu.Lock()
	tenants := slices.Concat(slices.Collect(maps.Keys(clients)), slices.Collect(maps.Keys(times)),
		slices.Collect(maps.Keys(s.gates.paused)), slices.Collect(maps.Keys(s.gates.disabled)))
	s.gates.mu.Unlock()
	out := make(map[string]console.TenantState, len(tenants))
	for _, tenant := range tenants {
		st := console.TenantState{Clients: clients[tenant]}
		if t := times[tenant]; t != nil {
			st.Queries, st.Transactions = t.totals[countQueries].Load(), t.totals[countTransactions].Load()
			st.Received, st.Sent = t.totals[countReceived].Load(), t.totals[countSent].Load()
			st.Assignments = t.assignments.Load()
			st.QueryTime, st.XactTime, st.WaitTime = t.query.Load(), t.xact.Load(), t.wait.Load()
		}
		st.IsPaused, st.IsDisabled, st.Held = s.gates.state(tenant)
		out[tenant] = st
	}
	return out
}

// PoolMode is the tenant's effective pool mode.
func (s *Server) PoolMode(t *catalog.Tenant) string { return poolModeOf(t, s.live.Load().cfg.PoolMode) }

// MaxClientsPerTenant is Config.MaxConnsPerTenant.
func (s *Server) MaxClientsPerTenant() int { return s.live.Load().cfg.MaxConnsPerTenant }

// Settings are the proxy's settings under PgBouncer's names where it has
// one.
func (s *Server) Settings() []console.Setting {
	cfg := s.live.Load().cfg
	listen := ""
	if len(cfg.Listen) > 0 {
		listen = cfg.Listen[0]
	}
	return []console.Setting{
		{Key: "listen_addr", Value: listen, Default: "127.0.0.1:6432"},
		{Key: "unix_socket_dir", Value: cfg.UnixSocket},
		{Key: "auth_type", Value: cfg.AuthMethod, Default: AuthSCRAM, Changeable: true},
		{Key: "pool_mode", Value: cfg.PoolMode, Default: PoolSession, Changeable: true},
		{Key: "max_db_client_connections", Value: strconv.Itoa(cfg.MaxConnsPerTenant), Default: "0", Changeable: true},
		{Key: "client_login_timeout", Value: strconv.Itoa(int(cfg.StartupTimeout / time.Second)), Default: "15", Changeable: true},
		{Key: "idle_transaction_timeout", Value: strconv.Itoa(int(cfg.IdleInTransactionTimeout / time.Second)), Default: "60", Changeable: true},
		{Key: "shutdown_drain_timeout", Value: strconv.Itoa(int(cfg.DrainTimeout / time.Second)), Default: "30"},
	}
}

// Pause holds tenant's new transactions and logins ("": every tenant's).
func (s *Server) Pause(tenant string) { s.gates.setPaused(tenant, true) }

// Resume releases what Pause held.
func (s *Server) Resume(tenant string) { s.gates.setPaused(tenant, false) }

// Disable refuses tenant's new logins (after their password is checked).
func (s *Server) Disable(tenant string) { s.gates.setDisabled(tenant, true) }

// Enable lets tenant's logins in again.
func (s *Server) Enable(tenant string) { s.gates.setDisabled(tenant, false) }

// Kill ends tenant's client sessions now (57P01, as pg_terminate_backend
// says) and returns how many.
func (s *Server) Kill(tenant string) int {
	n := s.endSessions(func(t, _ string) bool { return t == tenant })
	// Sessions held by PAUSE look again, and see they were killed.
	s.gates.wake()
	return n
}
