package catalog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog/secrets"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// Options configure Open.
type Options struct {
	// CacheSize bounds each look-up cache (tenants, backends, users) in
	// entries; zero means 10000, a negative size is an error.
	CacheSize int
	// CacheTTL bounds how long a cached entry is trusted even without a
	// notification; zero means one minute.
	CacheTTL time.Duration
	// Logger receives provisioning and listener events; nil means no logging.
	Logger *zap.Logger
	// Sender delivers outbox events such as the welcome email; nil means
	// LogSender, which logs them.
	Sender Sender
	// Secrets seals the backends' admin DSNs and serving passwords the
	// catalog writes and opens those it reads; nil means encryption is off:
	// values are written as plain text and a sealed value read is an error
	// naming its backend. See package secrets.
	Secrets *secrets.Keyring
	// Registerer receives the look-up caches' metrics; nil means they
	// are exported nowhere.
	Registerer prometheus.Registerer
}

// notifyChannel is the channel control/0001_catalog.sql's trigger notifies.
const notifyChannel = "tenantproxy_catalog"

// Catalog is the repository over the control database. Look-ups are served
// from LRU caches that a dedicated LISTEN connection invalidates whenever any
// process changes a row. It is safe for concurrent use.
type Catalog struct {
	db     *pgxpool.Pool
	log    *zap.Logger
	sender Sender
	keys   *secrets.Keyring

	// mu orders cache fills against invalidations: a look-up stores its
	// result only if no invalidation happened since it started reading
	// (gen), so a slow reader cannot put back a row a notification dropped.
	mu  sync.Mutex
	gen uint64
	// epoch counts purges. A purge (the listener lost, an unknown
	// notification) keeps the entries, but only as the last known state:
	// one from an older epoch is served only while the control database
	// cannot be read (cached).
	epoch uint64
	// stale is set while look-ups are being answered from the last known
	// state, so that the outage is logged once, not per look-up.
	stale     atomic.Bool
	listening atomic.Bool
	ttl       time.Duration
	tenants   *lru.Cache[string, entry[Tenant]]
	backends  *lru.Cache[string, entry[Backend]]
	users     *lru.Cache[string, entry[User]]
	removals  watchers[func(tenantID, username string)]
	moves     watchers[func(tenant string)]
	// The caches' look-ups by result.
	tenantLookups, userLookups, backendLookups lookupCounters

	stop      context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once

	// failpoint, when set by a test, runs after each provisioning step and
	// fails the create with its error.
	failpoint func(step string) error
	// nameSource, when set by a test, replaces NewObjectName so that a test
	// can make names collide.
	nameSource func() string
}

// Open connects to the control database at dsn (already migrated) and starts
// listening for changes. It returns once the listener is in place, so every
// change committed after Open returns is seen.
func Open(ctx context.Context, dsn string, opts Options) (*Catalog, error) {
	if opts.CacheSize == 0 {
		opts.CacheSize = 10000
	}
	if opts.CacheTTL == 0 {
		opts.CacheTTL = time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Sender == nil {
		opts.Sender = LogSender{Logger: opts.Logger}
	}
	if opts.CacheSize < 0 {
		return nil, &ValidationError{Field: "cache size", Value: fmt.Sprint(opts.CacheSize), Reason: "must not be negative"}
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("catalog: invalid control DSN")
	}
	tenantLookups, userLookups, backendLookups, err := lookupMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("catalog: metrics: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// A control database that drops packets must fail a look-up in
		// time for the last known state to answer it (cached).
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	db, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	c := &Catalog{
		db:     db,
		log:    opts.Logger,
		sender: opts.Sender,
		keys:   opts.Secrets,
		ttl:    opts.CacheTTL,
		done:   make(chan struct{}),

		tenantLookups: tenantLookups, userLookups: userLookups, backendLookups: backendLookups,
	}
	// lru.New fails only for a size below 1, which Open refused above.
	c.tenants, _ = lru.New[string, entry[Tenant]](opts.CacheSize)
	c.backends, _ = lru.New[string, entry[Backend]](opts.CacheSize)
	c.users, _ = lru.New[string, entry[User]](opts.CacheSize)
	listener, err := c.connectListener(ctx, cfg.ConnConfig)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("catalog: listen: %w", err)
	}
	if err := registerTenantsCollector(opts.Registerer, c); err != nil {
		listener.Close(ctx)
		db.Close()
		return nil, fmt.Errorf("catalog: metrics: %w", err)
	}
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	c.stop = stop
	c.listening.Store(true)
	go c.listen(lctx, cfg.ConnConfig, listener)
	return c, nil
}

// Close stops the listener and closes every connection. It is idempotent.
func (c *Catalog) Close() {
	c.closeOnce.Do(func() {
		c.stop()
		<-c.done
		c.db.Close()
	})
}

func (c *Catalog) connectListener(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return conn, nil
}

// listen applies notifications until ctx ends, reconnecting with backoff
// when the connection drops. While it is not listening every cached entry
// is the last known state only (served when the catalog cannot be read)
// and nothing is stored, since a missed notification would otherwise leave
// a stale entry for a whole TTL.
func (c *Catalog) listen(ctx context.Context, cfg *pgx.ConnConfig, conn *pgx.Conn) {
	defer close(c.done)
	for {
		err := c.drain(ctx, conn)
		c.listening.Store(false)
		c.purge()
		conn.Close(context.WithoutCancel(ctx))
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("catalog listener lost; reconnecting", zap.Error(err))
		if conn = c.reconnect(ctx, cfg); conn == nil {
			return
		}
		// Look-ups that ran while nobody listened may have read rows whose
		// notification was missed: the purge's new generation keeps them
		// out of the cache.
		c.purge()
		c.listening.Store(true)
	}
}

// reconnect retries connectListener with exponential backoff until it
// succeeds or ctx ends (nil).
func (c *Catalog) reconnect(ctx context.Context, cfg *pgx.ConnConfig) *pgx.Conn {
	const maxBackoff = 5 * time.Second
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		conn, err := c.connectListener(ctx, cfg)
		if err == nil {
			return conn
		}
		backoff = min(2*backoff, maxBackoff)
		c.log.Warn("catalog listener reconnect failed", zap.Error(err), zap.Duration("retry_in", backoff))
	}
}

func (c *Catalog) drain(ctx context.Context, conn *pgx.Conn) error {
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		c.invalidate(n.Payload)
		c.reportRemoved(ctx, n.Payload)
		c.reportMove(n.Payload)
	}
}

// invalidate drops the entry a "<table>:<key>" notification names.
func (c *Catalog) invalidate(payload string) {
	table, key, _ := strings.Cut(payload, ":")
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	switch table {
	case "tenants":
		c.tenants.Remove(key)
	case "backends":
		c.backends.Remove(key)
	case "tenant_users":
		c.users.Remove(key)
	case "tenant_moves":
		// Nothing cached: the tenant row's own notification announces
		// the switch.
	default:
		c.purgeLocked()
	}
}

func (c *Catalog) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.purgeLocked()
}

func (c *Catalog) purgeLocked() { c.epoch++ }

func (c *Catalog) generation() (gen, epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen, c.epoch
}

// entry is a cached value and when it stops being trusted. The TTL is
// checked on read rather than by expirable.LRU, whose cleanup goroutine
// cannot be stopped (hashicorp/golang-lru#159) and would outlive Close.
type entry[V any] struct {
	v       V
	expires time.Time
	epoch   uint64
}

// cached serves key from cache or loads it; a load is stored only when no
// invalidation raced it and the listener is up.
//
// When the load fails for any reason but a missing row (the control
// database is down or unreachable), the last known entry answers, even
// expired or from before a purge: tenants and users already known keep
// logging in through an outage of the catalog, which cannot change while
// it is down. An entry a notification named is gone (invalidate), so a
// change the listener heard is never undone this way; one whose
// notification was lost with the connection is served as it was until
// the catalog answers again.
func cached[V any](c *Catalog, cache *lru.Cache[string, entry[V]], counts *lookupCounters, key string, load func() (V, error)) (V, error) {
	e, known := cache.Get(key)
	gen, epoch := c.generation()
	if known && e.epoch == epoch && time.Now().Before(e.expires) {
		counts.hit.Inc()
		return e.v, nil
	}
	v, err := load()
	if err != nil && known && !errors.Is(err, ErrNotFound) {
		if !c.stale.Swap(true) {
			c.log.Warn("catalog unreachable: serving known tenants, users and backends from the last known state", zap.Error(err))
		}
		counts.stale.Inc()
		return e.v, nil
	}
	counts.miss.Inc()
	if err != nil {
		return v, err
	}
	if c.stale.Swap(false) {
		c.log.Info("catalog reachable again")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen && c.listening.Load() {
		cache.Add(key, entry[V]{v: v, expires: time.Now().Add(c.ttl), epoch: c.epoch})
	}
	return v, nil
}

// TenantBySubdomain returns the tenant with that subdomain in any status;
// the caller decides what a suspended or provisioning tenant may do. A
// missing tenant is an error wrapping ErrNotFound. The result is a copy the
// caller may keep; its Features and Settings must not be modified.
func (c *Catalog) TenantBySubdomain(ctx context.Context, subdomain string) (*Tenant, error) {
	t, err := cached(c, c.tenants, &c.tenantLookups, subdomain, func() (Tenant, error) {
		return c.tenant(ctx, c.db, subdomain)
	})
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// Backend returns the backend server called name, secrets included.
func (c *Catalog) Backend(ctx context.Context, name string) (*Backend, error) {
	b, err := cached(c, c.backends, &c.backendLookups, name, func() (Backend, error) {
		return c.backend(ctx, c.db, name)
	})
	if err != nil {
		return nil, err
	}
	return &b, nil
}

// User returns tenant tenantID's login username with its SCRAM verifier.
func (c *Catalog) User(ctx context.Context, tenantID, username string) (*User, error) {
	u, err := cached(c, c.users, &c.userLookups, tenantID+"/"+username, func() (User, error) {
		var u User
		err := c.db.QueryRow(ctx, "SELECT tenant_id, username, verifier, role FROM tenant_users WHERE tenant_id = $1 AND username = $2",
			tenantID, username).Scan(&u.TenantID, &u.Username, &u.Verifier, &u.Role)
		if errors.Is(err, pgx.ErrNoRows) {
			return u, fmt.Errorf("catalog: user %q of tenant %q: %w", username, tenantID, ErrNotFound)
		}
		if err != nil {
			return u, fmt.Errorf("catalog: user %q of tenant %q: %w", username, tenantID, err)
		}
		return u, nil
	})
	if err != nil {
		return nil, err
	}
	return &u, nil
}

// querier is a pool, a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

const tenantColumns = `id, name, subdomain, isolation_level, plan, status, data_region, backend, database,
	coalesce(database_url, ''), coalesce(schema_name, ''), max_users, max_storage_gb, features, settings,
	created_at, subscription_expires_at, coalesce(login_password, ''),
	limits, coalesce((SELECT p.limits FROM plan_limits p WHERE p.plan = tenants.plan), '{}'),
	storage_bytes, storage_measured_at`

// scanTenant reads a row of tenantColumns and opens its login password.
func (c *Catalog) scanTenant(row pgx.Row) (Tenant, error) {
	var t Tenant
	var login string
	var tenantLimits, planLimits []byte
	err := row.Scan(&t.ID, &t.Name, &t.Subdomain, &t.Tier, &t.Plan, &t.Status, &t.Region, &t.Backend, &t.Database,
		&t.DatabaseURL, &t.SchemaName, &t.MaxUsers, &t.MaxStorageGB, &t.Features, &t.Settings,
		&t.CreatedAt, &t.SubscriptionExpiresAt, &login, &tenantLimits, &planLimits,
		&t.StorageBytes, &t.StorageMeasuredAt)
	t.Limits = resolveLimits(t.Plan, planLimits, tenantLimits)
	if err != nil || login == "" {
		return t, err
	}
	t.LoginPassword, err = migrations.OpenTenantLogin(c.keys, t.ID, login)
	return t, err
}

func (c *Catalog) tenant(ctx context.Context, q querier, subdomain string) (Tenant, error) {
	t, err := c.scanTenant(q.QueryRow(ctx, "SELECT "+tenantColumns+" FROM tenants WHERE subdomain = $1", subdomain))
	if errors.Is(err, pgx.ErrNoRows) {
		return t, fmt.Errorf("catalog: tenant %q: %w", subdomain, ErrNotFound)
	}
	if err != nil {
		return t, fmt.Errorf("catalog: tenant %q: %w", subdomain, err)
	}
	return t, nil
}

const backendColumns = "name, region, admin_dsn, serving_user, serving_password, capacity, shared_database, schema_database"

// scanBackend reads a row of backendColumns and opens its secrets.
func (c *Catalog) scanBackend(row pgx.Row) (Backend, error) {
	var b Backend
	var dsn, password string
	if err := row.Scan(&b.Name, &b.Region, &dsn, &b.ServingUser, &password, &b.Capacity, &b.SharedDatabase, &b.SchemaDatabase); err != nil {
		return b, err
	}
	var err error
	if b.AdminDSN, err = c.keys.OpenBackend(b.Name, "admin DSN", dsn); err != nil {
		return b, err
	}
	b.ServingPassword, err = c.keys.OpenBackend(b.Name, "serving password", password)
	return b, err
}

func (c *Catalog) backend(ctx context.Context, q querier, name string) (Backend, error) {
	b, err := c.scanBackend(q.QueryRow(ctx, "SELECT "+backendColumns+" FROM backends WHERE name = $1", name))
	if errors.Is(err, pgx.ErrNoRows) {
		return b, fmt.Errorf("catalog: backend %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return b, fmt.Errorf("catalog: backend %q: %w", name, err)
	}
	return b, nil
}
