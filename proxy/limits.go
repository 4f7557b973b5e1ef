package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// limitsRefresh is how often a tenant's limits, plan and features are
// looked up again while it has sessions: a change in the catalog reaches
// sessions already open within about this long (plus the catalog's
// invalidation, milliseconds), well inside the second the README promises
// for plan and features. The look-up is the catalog's cache, which its
// LISTEN keeps current, so it costs no query.
const limitsRefresh = 250 * time.Millisecond

// rateWait bounds how long a transaction over its tenant's
// transactions_per_second waits for its turn before it fails with 53400.
const rateWait = time.Second

// tenantLimits is what the proxy enforces of one tenant's catalog limits
// (catalog.Limits), shared by all of its sessions on this proxy and
// updated in place, so a change applies to sessions already open.
type tenantLimits struct {
	// serverConns is the tenant's own cap on server connections per pool
	// (pool.Target.TenantCap).
	serverConns atomic.Int32
	rate        tokenBucket
	// checked is when the limits were last looked up (UnixNano);
	// refreshing is set while a look-up runs.
	checked    atomic.Int64
	refreshing atomic.Bool
	refs       int // sessions holding it, under limitsRegistry.mu
	// plan is the tenant's plan and features as its sessions' server
	// connections should have them (tenantplan.go).
	plan atomic.Pointer[planSetup]
	// quota is the tenant's standing against its storage quota (quota.go).
	quota atomic.Pointer[quotaState]
}

func (tl *tenantLimits) apply(t *catalog.Tenant, now time.Time) {
	l := t.Limits
	tl.serverConns.Store(int32(l.ServerConnections))
	tl.rate.setRate(l.TransactionsPerSecond, now)
	tl.setPlan(t)
	tl.checked.Store(now.UnixNano())
}

// limitsRegistry holds the limits of every tenant with sessions here.
type limitsRegistry struct {
	mu sync.Mutex
	m  map[string]*tenantLimits
}

// join returns t's shared limits, updated from t, until leave.
func (r *limitsRegistry) join(t *catalog.Tenant) *tenantLimits {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[string]*tenantLimits)
	}
	tl := r.m[t.Subdomain]
	if tl == nil {
		tl = &tenantLimits{}
		r.m[t.Subdomain] = tl
	}
	tl.refs++
	tl.apply(t, time.Now())
	return tl
}

func (r *limitsRegistry) leave(tenant string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if tl := r.m[tenant]; tl != nil {
		if tl.refs--; tl.refs <= 0 {
			delete(r.m, tenant)
		}
	}
}

// admitTransaction is called before a session's transaction starts: it
// waits for the tenant's rate (up to rateWait, else 53400) and, once a
// second, looks the tenant's limits up again in the background.
func (s *Server) admitTransaction(ctx context.Context, tenant string, tl *tenantLimits) error {
	now := time.Now()
	if now.UnixNano()-tl.checked.Load() > int64(limitsRefresh) && tl.refreshing.CompareAndSwap(false, true) {
		go s.refreshLimits(tenant, tl)
	}
	return tl.rate.wait(ctx, now, rateWait, tenant)
}

func (s *Server) refreshLimits(tenant string, tl *tenantLimits) {
	defer tl.refreshing.Store(false)
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	t, err := s.resolver.Lookup(ctx, tenant)
	if err != nil || t == nil {
		// Gone or unreachable: keep the last known limits, and try again
		// in a second rather than at once.
		if err != nil {
			s.log.Debug("tenant limits not refreshed", zap.String("tenant", tenant), zap.Error(err))
		}
		tl.checked.Store(time.Now().UnixNano())
		return
	}
	tl.apply(t, time.Now())
	s.applyQuota(t, tl)
}

// tokenBucket spaces a tenant's transactions to its rate, with a burst of
// one second's worth. Waiters reserve their token as they arrive, so they
// are served in order; one that would wait longer than its bound takes no
// token and fails at once.
type tokenBucket struct {
	// limited mirrors rate > 0, so that a tenant without a rate takes no
	// lock per transaction.
	limited atomic.Bool
	mu      sync.Mutex
	rate    float64 // tokens a second; 0: unlimited
	tokens  float64 // may be negative: tokens reserved by waiters
	last    time.Time
}

func (b *tokenBucket) setRate(rate float64, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rate == b.rate {
		return
	}
	b.refillLocked(now)
	if b.rate == 0 {
		b.tokens = rate // a bucket starts full
	}
	b.rate = rate
	b.tokens = min(b.tokens, b.burstLocked())
	b.limited.Store(rate > 0)
}

func (b *tokenBucket) burstLocked() float64 { return max(b.rate, 1) }

func (b *tokenBucket) refillLocked(now time.Time) {
	if !b.last.IsZero() {
		b.tokens = min(b.tokens+now.Sub(b.last).Seconds()*b.rate, b.burstLocked())
	}
	b.last = now
}

// wait takes a token, waiting for it up to bound.
func (b *tokenBucket) wait(ctx context.Context, now time.Time, bound time.Duration, tenant string) error {
	if !b.limited.Load() {
		return nil
	}
	b.mu.Lock()
	if b.rate <= 0 {
		b.mu.Unlock()
		return nil
	}
	b.refillLocked(now)
	if b.tokens >= 1 {
		b.tokens--
		b.mu.Unlock()
		return nil
	}
	d := time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
	if d > bound {
		rate := b.rate
		b.mu.Unlock()
		return pgerr.Errorf(pgerr.CodeRateLimited, "tenant %q is over its limit of %g transactions per second; retry later", tenant, rate)
	}
	b.tokens--
	b.mu.Unlock()
	return hold(ctx, d)
}
