package proxy

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tenantproxy/tenantproxy/catalog"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/console"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/scram"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/router"
)

// ErrServerClosed is returned by Serve and ListenAndServe after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Backends hands out server connections; *pool.Manager is the real one.
type Backends interface {
	Acquire(ctx context.Context, t pool.Target) (*pool.Conn, error)
	Release(c *pool.Conn, reusable bool)
}

var _ Backends = (*pool.Manager)(nil)

// live is the part of the configuration Reload may replace.
type live struct {
	cfg Config
}

// Server is the client-facing proxy. Create it with New, run it with
// Serve or ListenAndServe, stop it with Shutdown.
type Server struct {
	log      *zap.Logger
	resolver *router.Resolver
	policy   *policy.Policy
	backends Backends
	metrics  *metrics
	cancels  *cancelKeys
	// peers forwards cancel requests with another instance's keys
	// (peers.go); nil without Config.PeerID.
	peers    *peering
	throttle *loginThrottle
	// gate holds the connections still in start-up (accept.go).
	gate startupGate
	// buffers caps the memory held for long client messages.
	buffers *bufferBudget
	// console is Config.Console; gates are its PAUSE and DISABLE, and
	// moves' holds (move.go).
	console *console.Console
	gates   *tenantGates
	moves   moves
	// dummyKey derives fake SCRAM salts for unknown users and tenants
	// (Config.SaltSecret).
	dummyKey []byte
	unix     string
	live     atomic.Pointer[live]
	// lsn are the listeners ListenAndServe and Reload open (reload.go).
	lsn listenerSet

	// ctx ends when Shutdown gives up waiting; it bounds catalog and pool
	// calls of connections still starting.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[*tracked]struct{}
	perTenant map[string]int
	// limits are the limits of every tenant with a slot (limits.go).
	limits limitsRegistry
	// peaks are the most clients each tenant held at once since the last
	// Usage call.
	peaks map[string]int
	// pins count each tenant's pinned transaction-mode connections.
	pins pinCounts
	// times are every tenant's console totals since the proxy started;
	// entries are never removed (metering reads their totals), but their
	// series are (labels).
	times  map[string]*tenantTimes
	labels *tenantLabels
	// handlers counts connections (their goroutines, or their parked
	// sessions) and Serve goroutines.
	handlers sync.WaitGroup
	// parked holds idle transaction-mode clients that have no goroutine
	// (park.go).
	parked parking
	// unwatch stops the directory's reports of removed logins
	// (terminate.go).
	unwatch func()
}

// tracked is a client connection the Server can reach at Shutdown: its
// socket while starting, its session once relaying (set under Server.mu).
type tracked struct {
	raw  net.Conn
	sess clientSession
	// slot is its place under the start-up caps until it authenticates.
	slot *startupSlot
}

// New returns a Server that looks tenants up in dir and takes server
// connections from backends.
func New(cfg Config, dir router.Directory, backends Backends) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	resolver := router.NewResolver(dir)
	buffers := newBufferBudget(int64(cfg.MaxBufferedBytes))
	m, err := newMetrics(cfg.Registerer, func() float64 { return float64(buffers.inUse()) })
	if err != nil {
		return nil, fmt.Errorf("proxy: metrics: %w", err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	if cfg.SaltSecret != "" {
		key = scram.HMAC([]byte(cfg.SaltSecret), "tenantproxy: fake SCRAM salts of unknown users and tenants")
	}
	exts := cfg.Extensions
	if exts == nil {
		exts = policy.DefaultExtensions
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		log: cfg.Logger, resolver: resolver, policy: policy.NewWith(exts),
		backends: backends, metrics: m, cancels: newCancelKeys(cfg.PeerID), throttle: newLoginThrottle(),
		buffers: buffers, console: cfg.Console, gates: newTenantGates(),
		dummyKey: key, unix: cfg.UnixSocket, ctx: ctx, cancel: cancel,
		listeners: make(map[net.Listener]struct{}), conns: make(map[*tracked]struct{}), perTenant: make(map[string]int), peaks: make(map[string]int),
		times: make(map[string]*tenantTimes), labels: newTenantLabels(m, max(cfg.MetricsTenants, 0), cfg.MetricsRankInterval),
	}
	if err := register(cfg.Registerer, newTenantCollector(s)); err != nil {
		return nil, fmt.Errorf("proxy: metrics: %w", err)
	}
	s.peers = newPeering(cfg.PeerID, cfg.Peers)
	s.live.Store(&live{cfg: cfg})
	s.lsn.init()
	s.watchRemovals(dir)
	s.joinMoves(dir)
	return s, nil
}

// Serve accepts connections on l until Shutdown (ErrServerClosed) or an
// accept error that no retry can clear (the listener closed or broken).
// Running out of descriptors or memory is not one: Serve pauses (up to
// 1 s, doubling) and accepts again. It closes l.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.handlers.Add(1)
	s.mu.Unlock()
	defer s.handlers.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	var backoff acceptBackoff
	var capLogs [2]rateLog
	for {
		conn, err := l.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			if !retryable(err) {
				return fmt.Errorf("proxy: accept: %w", err)
			}
			time.Sleep(backoff.failed(s.log, err))
			continue
		}
		backoff.succeeded()
		slot := s.admitStartup(conn, s.live.Load(), &capLogs)
		if slot == nil {
			continue
		}
		t := &tracked{raw: conn, slot: slot}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			s.gate.leave(slot)
			conn.Close()
			return ErrServerClosed
		}
		s.conns[t] = struct{}{}
		s.handlers.Add(1)
		s.mu.Unlock()
		go s.handle(t)
	}
}

// handle owns one client connection from accept until its session runs;
// the session closes it when it ends (closeConn), on whichever goroutine
// that is: a transaction-mode client parks between transactions with no
// goroutine of its own (park.go).
func (s *Server) handle(t *tracked) {
	c := &clientConn{raw: t.raw, conn: t.raw, slot: t.slot}
	ss := s.open(t, c)
	if ss == nil {
		s.closeConn(t)
		return
	}
	// Not c: its start-up buffer (the ParameterStatus messages, ~0.5 kB)
	// would live as long as the session.
	conn := c.conn
	ss.run(func() {
		conn.Close()
		s.closeConn(t)
	})
}

// open takes the connection through its start-up to a session, which it
// registers for Shutdown; nil when the connection ends there (refused, or
// a CancelRequest handled).
func (s *Server) open(t *tracked, c *clientConn) clientSession {
	// The accept loop has set the start-up deadline (admitStartup).
	lv := s.live.Load()
	ctx, cancel := context.WithTimeout(s.ctx, lv.cfg.StartupTimeout)
	defer cancel()
	ss, err := s.start(ctx, c, lv)
	if err != nil {
		s.refuse(c, err)
		return nil
	}
	if ss == nil {
		return nil
	}
	if err := t.raw.SetDeadline(time.Time{}); err != nil {
		ss.kill()
	}
	s.mu.Lock()
	t.sess = ss
	switch {
	case s.closing && s.ctx.Err() != nil:
		ss.kill()
	case s.closing:
		ss.drain()
	}
	s.mu.Unlock()
	return ss
}

// closeConn ends what handle began: the start-up slot, the connection's
// entry, its socket and its count in handlers.
func (s *Server) closeConn(t *tracked) {
	s.gate.leave(t.slot)
	s.mu.Lock()
	delete(s.conns, t)
	s.mu.Unlock()
	t.raw.Close()
	s.handlers.Done()
}

// start runs admission and establishment; nil, nil is a handled
// CancelRequest.
func (s *Server) start(ctx context.Context, c *clientConn, lv *live) (clientSession, error) {
	p, err := s.admit(c, lv)
	if err != nil || p == nil {
		return nil, err
	}
	if s.isClosing() {
		return nil, errShuttingDown
	}
	return s.establish(ctx, c, lv, p)
}

// refuse reports a startup failure to the client when there is something
// to say: decisions and server refusals get an ErrorResponse, a client
// that went away or timed out gets nothing.
func (s *Server) refuse(c *clientConn, err error) {
	ce := classify(err)
	switch {
	case !ce.tell:
		s.log.Debug("connection ended during startup", zap.Stringer("client", c.raw.RemoteAddr()), zap.Error(err))
		return
	case ce.server == nil && ce.code == pgerr.CodeInternal:
		s.log.Error("startup failed", zap.Stringer("client", c.raw.RemoteAddr()), zap.Error(err))
	default:
		s.log.Debug("connection refused", zap.Stringer("client", c.raw.RemoteAddr()), zap.Error(err))
	}
	// Everything before the first ReadyForQuery ends the connection, so
	// it is FATAL, as in PostgreSQL, except where the README's error
	// table keeps ERROR to tell clients the condition is temporary
	// (53400).
	severity := fatal
	if ce.transient {
		severity = asIs
	}
	c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	c.send(errorResponse(err, severity))
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// takeSlot counts a client of t against limit (0: no cap) or t's own
// client_connections limit, whichever is lower, and returns t's shared
// limits, held until giveSlot.
func (s *Server) takeSlot(t *catalog.Tenant, limit int) (*tenantLimits, bool) {
	limit = clientCap(t, limit)
	s.mu.Lock()
	defer s.mu.Unlock()
	if limit > 0 && s.perTenant[t.Subdomain] >= limit {
		return nil, false
	}
	s.perTenant[t.Subdomain]++
	s.peaks[t.Subdomain] = max(s.peaks[t.Subdomain], s.perTenant[t.Subdomain])
	tl := s.limits.join(t)
	s.applyQuota(t, tl)
	return tl, true
}

// clientCap is the lower of limit and t's own client_connections (0:
// no cap).
func clientCap(t *catalog.Tenant, limit int) int {
	if own := t.Limits.ClientConnections; own > 0 && (limit <= 0 || own < limit) {
		return own
	}
	return limit
}

func (s *Server) giveSlot(tenant string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perTenant[tenant]--; s.perTenant[tenant] <= 0 {
		delete(s.perTenant, tenant)
		s.metrics.quota.forget(tenant)
	}
	s.limits.leave(tenant)
}

// forwardCancel sends a client's CancelRequest to the server connection
// that runs the statement of the session owning the key, if one does
// (canceller), or, when the key is another peer's, to that peer
// (peers.go); otherwise the request is dropped. Like PostgreSQL, it
// answers nothing. It returns once the server or peer has answered, at
// most CancelTimeout later.
func (s *Server) forwardCancel(pid uint32, secret []byte) {
	if s.peers.elsewhere(pid) {
		s.peers.forward(s.ctx, pid, secret, s.live.Load().cfg.CancelTimeout, s.log)
		return
	}
	e, ok := s.cancels.lookup(pid, secret)
	if !ok {
		s.log.Debug("cancel request with an unknown key")
		return
	}
	if e.sess.cancelHold() {
		return
	}
	c := e.sess.startCancel()
	if c == nil {
		s.log.Debug("cancel request dropped: no statement of the session is running", zap.String("tenant", e.tenant))
		return
	}
	defer e.sess.cancelDone()
	ctx, cancel := context.WithTimeout(s.ctx, s.live.Load().cfg.CancelTimeout)
	defer cancel()
	if err := c.ForwardCancel(ctx, e.target); err != nil {
		s.log.Warn("forwarding cancel request failed", zap.String("tenant", e.tenant), zap.Error(err))
	}
}

// Shutdown stops accepting, lets sessions finish their transactions (each
// ends with 57P01 as soon as it is idle) for up to DrainTimeout or until
// ctx ends, then ends the rest with 57P01 and waits for every connection
// goroutine. It returns ctx's error if ctx ended before they all finished.
// It does not close the Backends.
func (s *Server) Shutdown(ctx context.Context) error {
	defer s.buffers.close()
	defer s.parked.stop()
	s.unwatch()
	s.moves.stop()
	s.mu.Lock()
	s.closing = true
	s.lsn.closeOnce.Do(func() { close(s.lsn.shutdown) })
	for l := range s.listeners {
		l.Close()
	}
	for t := range s.conns {
		if t.sess != nil {
			t.sess.drain()
		}
	}
	s.mu.Unlock()
	// Sessions held by PAUSE look again, and see they are draining.
	s.gates.wake()

	all := make(chan struct{})
	go func() {
		s.handlers.Wait()
		close(all)
	}()
	drain := time.NewTimer(s.live.Load().cfg.DrainTimeout)
	defer drain.Stop()
	select {
	case <-all:
		s.cancel()
		return nil
	case <-drain.C:
	case <-ctx.Done():
	}
	s.mu.Lock()
	s.cancel()
	for t := range s.conns {
		if t.sess != nil {
			t.sess.kill()
		} else {
			t.raw.SetDeadline(pastDeadline)
		}
	}
	s.mu.Unlock()
	select {
	case <-all:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
