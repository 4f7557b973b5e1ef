package pool

import (
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Target is one backend login plus the tenant context a connection must
// carry while a client holds it. Connections are pooled by (Addr, Database,
// User); Password, TLS and Setup are read when a connection is made or
// handed out, so a changed password applies to new connections only.
type Target struct {
	// Addr is "host:port". A host that starts with '/' is the directory of
	// the server's unix socket, as in libpq.
	Addr     string
	Database string
	User     string
	Password string
	// TLS, when set, makes the connection send SSLRequest and refuse a
	// server that declines; the caller sets ServerName (or its own
	// verification). Nil means plaintext.
	TLS *tls.Config
	// Setup holds the statements that establish the tenant context. They
	// are sent as one simple Query on every Acquire (the previous holder's
	// context was reset on Release), so they run as one implicit
	// transaction: all of them take effect or none does. In transaction
	// mode (AcquireTx) they are sent only when the connection's context
	// differs.
	Setup []string
	// Tenant names who holds the connection, for Config.MaxConnsPerTenant
	// and for serving waiters round-robin across tenants. Empty means an
	// uncapped holder sharing one queue with every other empty Tenant.
	Tenant string
	// TenantCap, when set and positive, is the tenant's own cap (its
	// server_connections limit), read on every acquire so that a change
	// applies to the next one; the lower of it and Config.MaxConnsPerTenant
	// applies.
	TenantCap *atomic.Int32
}

// Config tunes a Manager. The zero value is a working configuration; each
// field states its default and what zero and negative values mean.
// Manager.Reconfigure replaces it on a running Manager, all but
// Registerer.
type Config struct {
	// MaxConnsPerKey caps the server connections, idle or in use, of one
	// (addr, database, user). Zero means 20. Acquire beyond it waits.
	MaxConnsPerKey int
	// MaxConnsPerTenant caps the server connections of one key that one
	// Target.Tenant holds at once, so one tenant cannot take every
	// connection; its further Acquires wait while other tenants are served.
	// Zero means half of MaxConnsPerKey (at least 1): one tenant's sessions
	// or open transactions then leave at least half of the pool to every
	// other tenant, while a tenant alone on a pool still gets half of it
	// (a quarter would starve small pools, and any share above half lets
	// two tenants exhaust the pool). Negative means no cap. This is a cap
	// on server connections of one pool; the proxy's own
	// proxy.Config.MaxConnsPerTenant caps client connections.
	MaxConnsPerTenant int
	// MinIdle is how many idle connections per key the reaper keeps open
	// (IdleTimeout does not close below it) and opens again, once the key
	// has been used. Zero means none.
	MinIdle int
	// WaitTimeout bounds how long an Acquire waits for a connection of a
	// full pool (or for its tenant's cap) before ErrWaitTimeout (53400).
	// Zero means 10 s, so a client never waits forever behind other
	// tenants' work; negative means until the Acquire's context ends.
	WaitTimeout time.Duration
	// IdleTimeout closes a connection idle for longer. Zero means 5 min;
	// negative disables.
	IdleTimeout time.Duration
	// MaxLifetime closes a connection older than this when it is idle or
	// released, so server-side memory growth and config changes do not
	// live forever. Zero means 1 h; negative disables.
	MaxLifetime time.Duration
	// ConnectTimeout bounds dial, TLS and authentication of a new
	// connection (the Acquire context may end it sooner). Zero means 10 s.
	ConnectTimeout time.Duration
	// ResetTimeout bounds the reset round trip of Release; a connection
	// that does not answer in time is closed. Zero means 5 s.
	ResetTimeout time.Duration
	// MaxMessageBodyLen is the largest backend message accepted while the
	// pool itself speaks to the server (startup, setup, reset). Zero means
	// 1 MiB.
	MaxMessageBodyLen int
	// ApplicationName is sent at startup so pg_stat_activity shows who
	// holds server connections. Zero means "tenantproxy".
	ApplicationName string
	// Registerer receives the pool's metrics. Nil means they are kept but
	// not registered. Collectors already registered by an earlier Manager
	// (a config reload) are reused.
	Registerer prometheus.Registerer
}

const (
	defaultMaxConnsPerKey    = 20
	defaultWaitTimeout       = 10 * time.Second
	defaultIdleTimeout       = 5 * time.Minute
	defaultMaxLifetime       = time.Hour
	defaultConnectTimeout    = 10 * time.Second
	defaultResetTimeout      = 5 * time.Second
	defaultMaxMessageBodyLen = 1 << 20
	defaultApplicationName   = "tenantproxy"
)

// withDefaults fills zero fields and rejects values that have no meaning.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if c.MaxConnsPerKey == 0 {
		c.MaxConnsPerKey = defaultMaxConnsPerKey
	}
	if c.MaxConnsPerKey < 0 {
		errs = append(errs, fmt.Errorf("MaxConnsPerKey %d: must be positive", c.MaxConnsPerKey))
	}
	switch {
	case c.MaxConnsPerTenant == 0:
		c.MaxConnsPerTenant = max(c.MaxConnsPerKey/2, 1)
	case c.MaxConnsPerTenant < 0:
		c.MaxConnsPerTenant = 0 // no cap (pool.perTenant)
	}
	if c.MinIdle < 0 || c.MinIdle > c.MaxConnsPerKey {
		errs = append(errs, fmt.Errorf("MinIdle %d: must be between 0 and MaxConnsPerKey (%d)", c.MinIdle, c.MaxConnsPerKey))
	}
	switch {
	case c.WaitTimeout == 0:
		c.WaitTimeout = defaultWaitTimeout
	case c.WaitTimeout < 0:
		c.WaitTimeout = 0 // until the context ends (pool.take)
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = defaultIdleTimeout
	}
	if c.MaxLifetime == 0 {
		c.MaxLifetime = defaultMaxLifetime
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = defaultConnectTimeout
	}
	if c.ConnectTimeout < 0 {
		errs = append(errs, fmt.Errorf("ConnectTimeout %s: must be positive", c.ConnectTimeout))
	}
	if c.ResetTimeout == 0 {
		c.ResetTimeout = defaultResetTimeout
	}
	if c.ResetTimeout < 0 {
		errs = append(errs, fmt.Errorf("ResetTimeout %s: must be positive", c.ResetTimeout))
	}
	if c.MaxMessageBodyLen == 0 {
		c.MaxMessageBodyLen = defaultMaxMessageBodyLen
	}
	if c.MaxMessageBodyLen < 0 {
		errs = append(errs, fmt.Errorf("MaxMessageBodyLen %d: must be positive", c.MaxMessageBodyLen))
	}
	if c.ApplicationName == "" {
		c.ApplicationName = defaultApplicationName
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("pool: config: %w", err)
	}
	return c, nil
}

// Validate reports what NewManager or Reconfigure would refuse in c, so a
// reload can check every part of a new configuration before applying any.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

// reapInterval is how often idle connections are checked against
// IdleTimeout and MaxLifetime: half the shorter one, so a connection
// outlives its limit by at most half of it, but not busier than every
// 10 ms nor lazier than every minute. Zero means no reaper is needed.
func (c Config) reapInterval() time.Duration {
	var d time.Duration
	for _, limit := range []time.Duration{c.IdleTimeout, c.MaxLifetime} {
		if limit > 0 && (d == 0 || limit < d) {
			d = limit
		}
	}
	if d == 0 {
		if c.MinIdle == 0 {
			return 0
		}
		d = 2 * time.Second
	}
	return min(max(d/2, 10*time.Millisecond), time.Minute)
}
