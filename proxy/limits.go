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
// transactions_per_second waits for its turn; one whose turn is further
// away fails at once with 53400.
const rateWait = time.Second

// serverTimeWait is rateWait for server_time_per_second: as long as a
// transaction may wait for a server connection (--pool-wait-timeout's
// default), since a tenant over its server time is a tenant whose
// connections are busy.
const serverTimeWait = 10 * time.Second

// firstTxEstimate is what a tenant's transaction is reckoned to keep its
// server connection busy before one of its transactions was measured.
const firstTxEstimate = time.Millisecond

// tenantLimits is what the proxy enforces of one tenant's catalog limits
// (catalog.Limits), shared by all of its sessions on this proxy and
// updated in place, so a change applies to sessions already open.
type tenantLimits struct {
	// serverConns is the tenant's own cap on server connections per pool
	// (pool.Target.TenantCap).
	serverConns atomic.Int32
	// rate is in transactions.
	rate tokenBucket
	// serverTime is in seconds of server connections' time: a transaction
	// reserves the tenant's usual transaction's time (txTime, at most a
	// second's worth) as it starts, and each of its statements pays for
	// the time it kept the server busy, up to a second's worth, when its
	// ReadyForQuery comes (spent), the first net of the reservation. So
	// waiters queue, spaced by what they are likely to take, costly
	// transactions pay as they go (one left unfinished, its client gone,
	// has paid for every statement answered), and one statement longer
	// than a second's budget delays the next ones by about a second, not
	// by its length: statement_timeout and server_connections bound those.
	serverTime tokenBucket
	// txTime is a moving average of its transactions' times, in ns.
	txTime atomic.Int64
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
	tl.rate.setRate(l.TransactionsPerSecond, max(l.TransactionsPerSecond, 1), now)
	budget := l.ServerTimePerSecond.Seconds()
	tl.serverTime.setRate(budget, budget, now)
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
// waits for the tenant's transaction rate (up to rateWait) and server time
// (up to serverTimeWait), else fails with 53400, and, every
// limitsRefresh, looks the tenant's limits up again in the background.
func (s *Server) admitTransaction(ctx context.Context, b *sessionBase) error {
	tl := b.limits
	now := time.Now()
	if now.UnixNano()-tl.checked.Load() > int64(limitsRefresh) && tl.refreshing.CompareAndSwap(false, true) {
		go s.refreshLimits(b.tenant, tl)
	}
	d, ok := tl.rate.reserve(now, 1, rateWait)
	if !ok {
		return &overLimit{reason: refusedRate, err: pgerr.Errorf(pgerr.CodeRateLimited,
			"tenant %q is over its limit of %g transactions per second; retry later", b.tenant, tl.rate.limit())}
	}
	wait, err := b.reserveServerTime(now)
	if err == nil {
		err = b.hold(ctx, max(d, wait))
	}
	if err != nil {
		// Never to run: what it reserved goes back.
		if tl.rate.limited.Load() {
			tl.rate.settle(1, 0)
		}
		tl.serverTime.settle(float64(b.reserved.Swap(0))/float64(time.Second), 0)
	}
	return err
}

// reserveServerTime reserves the session's next transaction's share of
// its tenant's server time: the tenant's usual transaction time, at most
// a second's budget.
func (b *sessionBase) reserveServerTime(now time.Time) (time.Duration, error) {
	st := &b.limits.serverTime
	if !st.limited.Load() {
		return 0, nil
	}
	budget := st.limit()
	cost := min(b.limits.estimate().Seconds(), budget)
	wait, ok := st.reserve(now, cost, serverTimeWait)
	if !ok {
		e := pgerr.Errorf(pgerr.CodeRateLimited, "tenant %q is over its limit of %s of server time a second; retry later",
			b.tenant, time.Duration(budget*float64(time.Second)))
		e.Hint = "Its transactions queue for the server time its plan allows (server_time_per_second); this one's turn was more than 10s away."
		return 0, &overLimit{reason: refusedServerTime, err: e}
	}
	b.reserved.Store(int64(cost * float64(time.Second)))
	if wait > 0 {
		b.times.series.Load().counters[countHeld].Add(wait.Seconds())
	}
	return wait, nil
}

// errHoldCanceled ends a hold that the client's cancel request reached.
var errHoldCanceled = pgerr.Errorf(pgerr.CodeQueryCanceled, "canceling statement due to user request")

// hold waits d before the session's transaction starts. The client's
// statement is waiting as surely as one a server runs, so its cancel
// request ends the wait (cancelHold) and the statement fails as a
// cancelled one does, never to run.
func (b *sessionBase) hold(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	b.holding.Store(&cancel)
	defer b.holding.Store(nil)
	if err := hold(ctx, d); err != nil && context.Cause(ctx) == errHoldCanceled {
		return errHoldCanceled
	}
	return nil
}

// cancelHold ends the session's hold, if it is in one.
func (b *sessionBase) cancelHold() bool {
	f := b.holding.Load()
	if f != nil {
		(*f)(errHoldCanceled)
	}
	return f != nil
}

// spent charges a statement of the session that kept its server
// connection busy for d, net of what its transaction's start reserved if
// it is the transaction's first.
func (b *sessionBase) spent(d time.Duration) {
	if reserved := b.reserved.Swap(0); b.limits.serverTime.limited.Load() {
		b.limits.serverTime.settle(time.Duration(reserved).Seconds(), d.Seconds())
	}
}

// transacted folds a transaction that took d into the tenant's usual
// transaction time.
func (tl *tenantLimits) transacted(d time.Duration) {
	was := tl.txTime.Load()
	tl.txTime.Store(was + (int64(d)-was)/8)
}

// estimate is what the tenant's next transaction is reckoned to take of a
// server connection's time.
func (tl *tenantLimits) estimate() time.Duration {
	if d := time.Duration(tl.txTime.Load()); d > 0 {
		return d
	}
	return firstTxEstimate
}

// overLimit is a transaction refused by one of its tenant's limits; reason
// labels tenantproxy_tenant_refusals_total.
type overLimit struct {
	reason string
	err    *pgerr.Error
}

func (o *overLimit) Error() string { return o.err.Error() }
func (o *overLimit) Unwrap() error { return o.err }

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

// tokenBucket spaces a tenant's transactions to a rate, with a burst. A
// transaction reserves its cost as it arrives, so waiters are served in
// order; one that would wait longer than its bound takes nothing and fails
// at once.
type tokenBucket struct {
	// limited mirrors rate > 0, so that a tenant without a rate takes no
	// lock per transaction.
	limited atomic.Bool
	mu      sync.Mutex
	rate    float64 // tokens a second; 0: unlimited
	burst   float64 // the most tokens it holds
	tokens  float64 // negative: reserved by waiters, or owed
	last    time.Time
}

func (b *tokenBucket) setRate(rate, burst float64, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rate == b.rate && burst == b.burst {
		return
	}
	b.refillLocked(now)
	if b.rate == 0 {
		b.tokens = burst // a bucket starts full
	}
	b.rate, b.burst = rate, burst
	b.tokens = min(b.tokens, burst)
	b.limited.Store(rate > 0)
}

func (b *tokenBucket) limit() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rate
}

func (b *tokenBucket) refillLocked(now time.Time) {
	if !b.last.IsZero() {
		b.tokens = min(b.tokens+now.Sub(b.last).Seconds()*b.rate, b.burst)
	}
	b.last = now
}

// reserve takes cost tokens at now and returns how long their taker must
// wait for them; ok is false, and nothing is taken, if that is longer than
// bound.
func (b *tokenBucket) reserve(now time.Time, cost float64, bound time.Duration) (wait time.Duration, ok bool) {
	if !b.limited.Load() {
		return 0, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rate <= 0 {
		return 0, true
	}
	b.refillLocked(now)
	if b.tokens < cost {
		if wait = time.Duration((cost - b.tokens) / b.rate * float64(time.Second)); wait > bound {
			return 0, false
		}
	}
	b.tokens -= cost
	return wait, true
}

// settle trades reserved tokens for used ones, at most the burst, never
// leaving more than the burst.
func (b *tokenBucket) settle(reserved, used float64) {
	b.mu.Lock()
	b.tokens = min(b.tokens+reserved-min(used, b.burst), b.burst)
	b.mu.Unlock()
}
