package chatapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// ServicePassword is the password of the API's login to tenant: HMAC-SHA256
// of the tenant id under secret, base64url. Every replica derives the same
// one, so none has to be stored.
func ServicePassword(secret []byte, tenant string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(tenant))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// tenantPools holds one pgx pool per recently used tenant, each logging in
// to the proxy as that tenant's service user.
type tenantPools struct {
	base   *pgxpool.Config
	cat    *catalog.Catalog
	secret []byte
	user   string
	gauge  prometheus.Gauge

	// mu guards opening: the first request of a tenant ensures its login
	// and opens its pool while later ones wait for that result, so a
	// tenant's pool is opened once without holding up other tenants.
	// Look-ups of open pools take only the LRU's own lock.
	mu      sync.Mutex
	opening map[string]*opening
	cache   *lru.Cache[string, *tenantPool]
	// closing tracks the goroutines closing evicted pools; Close waits.
	closing sync.WaitGroup
}

// opening is a pool being opened; done is closed once tp or err is set.
type opening struct {
	done chan struct{}
	tp   *tenantPool
	err  error
}

// tenantPool is a pool with a count of the requests using it, so that an
// evicted pool is closed only once the last of them is done: pgxpool.Close
// would otherwise make their next query fail.
type tenantPool struct {
	*pgxpool.Pool
	owner   *tenantPools
	mu      sync.Mutex
	users   int
	evicted bool
}

func newTenantPools(cfg Config, base *pgxpool.Config, cat *catalog.Catalog, gauge prometheus.Gauge) *tenantPools {
	p := &tenantPools{base: base, cat: cat, secret: cfg.ServiceSecret, user: cfg.ServiceUser, gauge: gauge, opening: map[string]*opening{}}
	base.MaxConns = int32(cfg.PoolMaxConns)
	base.MinConns = 0
	base.MaxConnIdleTime = cfg.PoolIdleTimeout
	base.HealthCheckPeriod = min(cfg.PoolIdleTimeout, base.HealthCheckPeriod)
	// Statements are not prepared by name: with transaction pooling (a
	// later proxy mode) consecutive statements may reach different server
	// connections, where a named statement would not exist.
	base.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	// NewWithSize fails only for a size below 1; Config validation allows
	// zero (the default) only, so MaxTenantPools is positive here.
	p.cache, _ = lru.NewWithEvict(cfg.MaxTenantPools, func(_ string, tp *tenantPool) { tp.evict() })
	return p
}

// acquire returns tenant's pool, creating it (and the tenant's service
// login) on first use. The caller must call release when done with it.
func (p *tenantPools) acquire(ctx context.Context, tenant string) (*tenantPool, error) {
	for {
		tp, ok := p.cache.Get(tenant)
		if !ok {
			var err error
			if tp, err = p.open(ctx, tenant); err != nil {
				return nil, err
			}
		}
		if tp.hold() {
			return tp, nil
		}
		// Evicted between the look-up and hold: look again.
	}
}

func (p *tenantPools) open(ctx context.Context, tenant string) (*tenantPool, error) {
	p.mu.Lock()
	if tp, ok := p.cache.Get(tenant); ok {
		p.mu.Unlock()
		return tp, nil
	}
	if o, ok := p.opening[tenant]; ok {
		p.mu.Unlock()
		select {
		case <-o.done:
			return o.tp, o.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	o := &opening{done: make(chan struct{})}
	p.opening[tenant] = o
	p.mu.Unlock()

	o.tp, o.err = p.connect(ctx, tenant)
	p.mu.Lock()
	if o.err == nil {
		p.cache.Add(tenant, o.tp)
		p.gauge.Inc()
	}
	delete(p.opening, tenant)
	p.mu.Unlock()
	close(o.done)
	return o.tp, o.err
}

// connect ensures tenant's service login and builds its pool, which
// connects lazily.
func (p *tenantPools) connect(ctx context.Context, tenant string) (*tenantPool, error) {
	password := ServicePassword(p.secret, tenant)
	if err := p.cat.EnsureServiceUser(ctx, tenant, p.user, password); err != nil {
		return nil, fmt.Errorf("service login of tenant %q: %w", tenant, err)
	}
	cfg := p.base.Copy()
	cfg.ConnConfig.User = p.user
	cfg.ConnConfig.Password = password
	cfg.ConnConfig.RuntimeParams["options"] = "-c tenant=" + tenant
	cfg.ConnConfig.RuntimeParams["application_name"] = "chatapi"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pool of tenant %q: %w", tenant, err)
	}
	return &tenantPool{Pool: pool, owner: p}, nil
}

// drop closes tenant's pool once its current requests are done; the next
// request opens a fresh one. Used when a tenant is suspended or deleted and
// when its login is refused.
func (p *tenantPools) drop(tenant string) { p.cache.Remove(tenant) }

// Close closes every pool and waits until they are closed. Requests must
// have ended.
func (p *tenantPools) Close() {
	p.cache.Purge()
	p.closing.Wait()
}

func (tp *tenantPool) hold() bool {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.evicted {
		return false
	}
	tp.users++
	return true
}

func (tp *tenantPool) release() {
	tp.mu.Lock()
	tp.users--
	last := tp.evicted && tp.users == 0
	tp.mu.Unlock()
	if last {
		tp.close()
	}
}

// evict runs inside the LRU's lock, so it must not block: closing says
// goodbye to every connection.
func (tp *tenantPool) evict() {
	tp.mu.Lock()
	tp.evicted = true
	idle := tp.users == 0
	tp.mu.Unlock()
	tp.owner.gauge.Dec()
	if idle {
		tp.close()
	}
}

func (tp *tenantPool) close() {
	tp.owner.closing.Add(1)
	go func() {
		defer tp.owner.closing.Done()
		tp.Pool.Close()
	}()
}
