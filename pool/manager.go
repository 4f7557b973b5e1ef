package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Manager owns every pool of server connections and the reaper goroutine
// that closes connections idle or old past their limits.
type Manager struct {
	// cfg is replaced whole by Reconfigure; readers load it once per
	// decision so one Acquire never mixes two configurations.
	cfg     atomic.Pointer[Config]
	log     *zap.Logger
	metrics *metrics

	mu     sync.Mutex
	pools  map[poolKey]*pool
	closed bool

	stopReaper chan struct{}
	reaperDone chan struct{}
	// reconfigured wakes the reaper to take up a new interval.
	reconfigured chan struct{}
}

// poolKey is what makes two connections interchangeable before setup.
type poolKey struct {
	addr, database, user string
}

// NewManager validates cfg and starts the reaper. The caller must Close the
// Manager. A nil log discards the pool's few log lines. It fails on a config value that has no meaning or when the
// metrics cannot be registered.
func NewManager(cfg Config, log *zap.Logger) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("pool: metrics: %w", err)
	}
	m := &Manager{
		log:          log,
		metrics:      met,
		pools:        make(map[poolKey]*pool),
		stopReaper:   make(chan struct{}),
		reaperDone:   make(chan struct{}),
		reconfigured: make(chan struct{}, 1),
	}
	m.cfg.Store(&cfg)
	go m.reap()
	return m, nil
}

// Acquire returns a connection of t's key with t.Setup applied: an idle one
// when there is one (most recently used first, its session is warm), else a
// new one, else it waits for one until ctx ends or Config.WaitTimeout
// passes (ErrWaitTimeout); t.Tenant's connections count against
// Config.MaxConnsPerTenant. An idle
// connection found broken (the server was restarted or the backend
// terminated) is closed and the next one tried, so a stale pool never
// reaches the caller. Errors: ErrClosed, ErrWaitTimeout, *SetupError, or
// the connect error (wrapping pgconn's, and *pgconn.PgError when the server
// refused the login). With a negative WaitTimeout and no deadline or
// cancellation on ctx a full pool is waited for until Close. The caller
// must Release the Conn.
func (m *Manager) Acquire(ctx context.Context, t Target) (*Conn, error) {
	// A context that has already ended would only interrupt the setup of a
	// good idle connection and get it closed.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pool: acquire: %w", err)
	}
	p, err := m.poolFor(&t)
	if err != nil {
		return nil, err
	}
	for {
		c, holder, err := p.take(ctx, t.Tenant, t.TenantCap, "", m.cfg.Load().WaitTimeout, nil)
		if err != nil {
			return nil, err
		}
		fresh := c == nil
		if fresh {
			if c, err = m.dial(ctx, p, &t, holder); err != nil {
				return nil, err
			}
		} else if !c.alive() || m.expired(c, time.Now()) {
			p.destroy(c)
			continue
		} else if c.context != "" {
			// Left in a tenant context by transaction mode: a session
			// starts from a reset connection, as after Release.
			if err := c.reset(m.cfg.Load().ResetTimeout); err != nil {
				p.destroy(c)
				continue
			}
		}
		if err := c.setup(ctx, &t); err != nil {
			p.destroy(c)
			var setupErr *SetupError
			if fresh || errors.As(err, &setupErr) || errors.Is(err, context.DeadlineExceeded) ||
				errors.Is(err, context.Canceled) || ctx.Err() != nil {
				return nil, err
			}
			// A reused connection that failed mid-setup died while idle.
			m.log.Debug("pool: dropped broken idle connection", zap.String("database", t.Database),
				zap.String("user", t.User), zap.Uint32("pid", c.pid), zap.Error(err))
			continue
		}
		return c, nil
	}
}

// Release hands c back. With reusable, the caller vouches that the protocol
// is at a message boundary with the server waiting for a query (the last
// server message was ReadyForQuery and nothing was sent since); c is reset
// (see reset) and kept idle, or handed to a waiting Acquire. Otherwise, or
// when the reset fails, the connection is too old, or the Manager is
// closed, c is closed. Release blocks for the reset round trip, at most
// Config.ResetTimeout. c must not be used afterwards.
func (m *Manager) Release(c *Conn, reusable bool) {
	p := c.pool
	p.mu.Lock()
	state := c.state
	p.mu.Unlock()
	if state != stateActive {
		m.log.Error("pool: release of a connection that is not in use",
			zap.Uint32("pid", c.pid), zap.Uint8("state", uint8(state)))
		return
	}
	if reusable && !m.expired(c, time.Now()) {
		err := c.reset(m.cfg.Load().ResetTimeout)
		if err == nil && p.put(c) {
			return
		}
		if err != nil {
			m.log.Info("pool: closing connection that failed reset", zap.String("database", p.key.database),
				zap.String("user", p.key.user), zap.Uint32("pid", c.pid), zap.Error(err))
		}
	}
	p.destroy(c)
}

// Close refuses further Acquires, wakes waiting ones with ErrClosed, closes
// idle connections and stops the reaper. Connections in use are closed by
// their Release. It is idempotent and returns when the reaper has ended.
func (m *Manager) Close() error {
	m.mu.Lock()
	wasClosed := m.closed
	m.closed = true
	pools := make([]*pool, 0, len(m.pools))
	for _, p := range m.pools {
		pools = append(pools, p)
	}
	m.mu.Unlock()
	if !wasClosed {
		close(m.stopReaper)
	}
	<-m.reaperDone
	for _, p := range pools {
		p.close()
	}
	return nil
}

func (m *Manager) poolFor(t *Target) (*pool, error) {
	k := poolKey{addr: t.Addr, database: t.Database, user: t.User}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	cfg := m.cfg.Load()
	p := m.pools[k]
	if p == nil {
		// Under m.mu, as Reconfigure's resizing is: a new pool never
		// misses a new size.
		p = &pool{manager: m, key: k, max: cfg.MaxConnsPerKey, perTenant: cfg.MaxConnsPerTenant,
			km: m.metrics.forKey(t.Database, t.User), tenants: make(map[string]*tenantQueue), all: make(map[*Conn]struct{})}
		m.pools[k] = p
	}
	if cfg.MinIdle > 0 {
		p.mu.Lock()
		if p.target == nil || p.target.Password != t.Password {
			saved := *t
			saved.Setup, saved.Tenant = nil, ""
			p.target = &saved
		}
		p.mu.Unlock()
	}
	return p, nil
}

func (m *Manager) expired(c *Conn, now time.Time) bool {
	limit := m.cfg.Load().MaxLifetime
	return limit > 0 && now.Sub(c.createdAt) >= limit
}

// reap runs until Close, closing idle connections past IdleTimeout or
// MaxLifetime and opening them up to MinIdle, at the interval the current
// configuration asks for (none: it only waits for Reconfigure or Close).
// Pools are never removed: their number is bounded by the routes, and an
// empty one holds no connection.
func (m *Manager) reap() {
	defer close(m.reaperDone)
	tick := time.NewTimer(0)
	defer tick.Stop()
	for {
		tick.Stop()
		var due <-chan time.Time
		if every := m.cfg.Load().reapInterval(); every > 0 {
			tick.Reset(every)
			due = tick.C
		}
		select {
		case <-m.stopReaper:
			return
		case <-m.reconfigured:
		case now := <-due:
			m.reapOnce(now)
		}
	}
}

func (m *Manager) reapOnce(now time.Time) {
	cfg := m.cfg.Load()
	pools := m.allPools()
	for _, p := range pools {
		// A connection given back over a shrunk size by a path that
		// cannot close it (a waiter granted while giving up, a cancel
		// answered) goes here.
		p.resize(cfg.MaxConnsPerKey, cfg.MaxConnsPerTenant)
		p.evict(func(c *Conn) bool { return m.expired(c, now) },
			func(c *Conn) bool { return cfg.IdleTimeout > 0 && now.Sub(c.idleSince) >= cfg.IdleTimeout },
			cfg.MinIdle)
	}
	if cfg.MinIdle > 0 {
		m.fillIdle(pools)
	}
}

// Reconfigure validates cfg and applies it to every pool, existing and
// future; on error nothing changes. Sizes and per-tenant caps take effect
// at once: a larger pool hands its new slots to waiting Acquires, a
// smaller one closes idle connections over the new size now and busy ones
// when they are released, until it fits. Timeouts apply to the next wait,
// dial, reset or reaper pass; MaxLifetime and IdleTimeout also to
// connections already open. Registerer is not changed.
func (m *Manager) Reconfigure(cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	cfg.Registerer = m.cfg.Load().Registerer
	m.mu.Lock()
	m.cfg.Store(&cfg)
	pools := make([]*pool, 0, len(m.pools))
	for _, p := range m.pools {
		pools = append(pools, p)
	}
	m.mu.Unlock()
	for _, p := range pools {
		p.resize(cfg.MaxConnsPerKey, cfg.MaxConnsPerTenant)
	}
	select {
	case m.reconfigured <- struct{}{}:
	default:
	}
	return nil
}
