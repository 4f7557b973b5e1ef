package pool

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// pool is the connections of one key. Its invariants, under mu: open
// counts every connection that holds one of the max slots (idle, in use,
// parked, or being dialled); a waiter is queued only while nothing can be handed
// to it (no idle connection and no free slot, or its tenant at its cap),
// because a released connection or a freed slot goes to a waiter before
// anything else.
//
// Waiters queue per tenant and tenants are served round-robin (rr), so a
// tenant with many waiting clients delays another tenant's next client by
// at most one grant, not by its whole queue.
type pool struct {
	manager *Manager
	key     poolKey
	max     int
	// perTenant caps the connections one tenant holds at once (0: no
	// cap). Acquires without a tenant are never capped.
	perTenant int
	km        keyMetrics

	mu   sync.Mutex
	idle []*Conn // stack: the most recently released on top
	open int
	// tenants are the tenants holding or waiting for connections, and
	// recent ones (forgetLocked).
	tenants map[string]*tenantQueue
	// rr lists the tenants with waiters, in the order they are served.
	rr      []*tenantQueue
	waiting int
	closed  bool
	// target is the latest Target seen, so the reaper can dial up to
	// MinIdle connections.
	target *Target
	// all is every connection dialled and not yet closed, whatever its
	// state, for Stats.
	all map[*Conn]struct{}
	// gen counts Reconnects: a connection dialled in an older generation
	// is closed when given back instead of being reused.
	gen uint64
}

// tenantQueue is one tenant's share of a pool.
type tenantQueue struct {
	name string
	held int
	// limit is the tenant's own cap as its latest take saw it (0: none).
	limit   int
	waiters []*waiter // FIFO
}

// grant is what a waiter is woken with: a connection, permission to dial
// in a slot already counted for it (conn == nil, err == nil), or the
// reason to give up.
type grant struct {
	conn *Conn
	err  error
}

// waiter is one waiting take. A caller that waits again and again (a
// transaction-mode client, through its TxTarget) reuses its waiter, so
// waiting does not allocate: take leaves ch empty and the timer stopped
// whichever way it returns.
type waiter struct {
	ch    chan grant // buffered 1: granting never blocks under mu
	tq    *tenantQueue
	timer *time.Timer
	// since is when it was queued (the console's maxwait).
	since time.Time
}

func newWaiter() *waiter { return &waiter{ch: make(chan grant, 1)} }

// take returns an idle connection (preferring one in the given context),
// or nil meaning the caller holds a slot and must dial (and on failure
// call dropSlot), or an error when ctx ended while waiting (or wait ran
// out) or the pool closed. The connection or slot counts against tenant
// until it is put back, destroyed or dropped.
func (p *pool) take(ctx context.Context, tenant string, limit *atomic.Int32, wantContext string, wait time.Duration, w *waiter) (*Conn, *tenantQueue, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, nil, ErrClosed
	}
	tq := p.queueLocked(tenant)
	tq.limit = 0 // a take without a cap of the tenant's own (session mode) lifts it
	if limit != nil {
		tq.limit = int(limit.Load())
	}
	if len(tq.waiters) == 0 && p.underCapLocked(tq) {
		if c := p.idleLocked(wantContext); c != nil {
			tq.held++
			c.holder = tq
			p.mu.Unlock()
			p.km.wait.Observe(0)
			return c, tq, nil
		}
		if p.open < p.max {
			p.open++
			tq.held++
			p.km.active.Inc()
			p.mu.Unlock()
			p.km.wait.Observe(0)
			return nil, tq, nil
		}
	}
	if w == nil {
		w = newWaiter()
	}
	w.tq, w.since = tq, time.Now()
	if len(tq.waiters) == 0 {
		p.rr = append(p.rr, tq)
	}
	tq.waiters = append(tq.waiters, w)
	p.waiting++
	p.km.waiting.Inc()
	inUse, held, cap := p.open, tq.held, p.capLocked(tq)
	p.mu.Unlock()

	var expired <-chan time.Time
	if wait > 0 {
		if w.timer == nil {
			w.timer = time.NewTimer(wait)
		} else {
			w.timer.Reset(wait)
		}
		defer w.timer.Stop()
		expired = w.timer.C
	}
	var cause error
	select {
	case g := <-w.ch:
		p.km.wait.Observe(time.Since(w.since).Seconds())
		return g.conn, tq, g.err
	case <-ctx.Done():
		cause = context.Cause(ctx)
	case <-expired:
		cause = fmt.Errorf("waited %s", wait)
	}
	p.km.wait.Observe(time.Since(w.since).Seconds())
	p.mu.Lock()
	if i := slices.Index(tq.waiters, w); i >= 0 {
		p.removeWaiterLocked(tq, i)
		p.forgetLocked(tq)
		p.mu.Unlock()
	} else {
		// Granted while giving up: pass the grant on rather than lose a slot.
		g := <-w.ch
		switch {
		case g.conn != nil:
			p.putLocked(g.conn, tq)
		case g.err == nil:
			p.freeSlotLocked(tq)
		}
		p.mu.Unlock()
	}
	if cap > 0 && tenant != "" && held >= cap {
		return nil, nil, fmt.Errorf("%w (tenant %s holds %d of its %d connections to %s as %s): %w",
			ErrWaitTimeout, tenant, held, cap, p.key.database, p.key.user, cause)
	}
	return nil, nil, fmt.Errorf("%w (%d of %d connections to %s as %s in use): %w",
		ErrWaitTimeout, inUse, p.max, p.key.database, p.key.user, cause)
}

// queueLocked returns tenant's queue, creating it.
func (p *pool) queueLocked(tenant string) *tenantQueue {
	tq := p.tenants[tenant]
	if tq == nil {
		tq = &tenantQueue{name: tenant}
		p.tenants[tenant] = tq
	}
	return tq
}

// keptTenantQueues is how many entries of tenants that hold and wait for
// nothing a pool keeps, so a tenant's next transaction does not allocate
// its entry again; past it they are dropped, so the map stays bounded by
// the tenants in flight.
const keptTenantQueues = 4096

// forgetLocked drops a tenant's entry once it holds and waits for nothing
// and the map is past keptTenantQueues.
func (p *pool) forgetLocked(tq *tenantQueue) {
	if tq.held == 0 && len(tq.waiters) == 0 && len(p.tenants) > keptTenantQueues {
		delete(p.tenants, tq.name)
	}
}

func (p *pool) underCapLocked(tq *tenantQueue) bool {
	cap := p.capLocked(tq)
	return cap <= 0 || tq.name == "" || tq.held < cap
}

// capLocked is the cap on tq's connections: the pool's share per tenant,
// or the tenant's own limit when that is lower (0: none).
func (p *pool) capLocked(tq *tenantQueue) int {
	if tq.limit > 0 && (p.perTenant <= 0 || tq.limit < p.perTenant) {
		return tq.limit
	}
	return p.perTenant
}

func (p *pool) removeWaiterLocked(tq *tenantQueue, i int) {
	tq.waiters = slices.Delete(tq.waiters, i, i+1)
	p.waiting--
	p.km.waiting.Dec()
	if len(tq.waiters) == 0 {
		p.rr = slices.DeleteFunc(p.rr, func(q *tenantQueue) bool { return q == tq })
	}
}

// idleLocked pops an idle connection: the most recently used one that
// carries context, else the most recently used one.
func (p *pool) idleLocked(want string) *Conn {
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	i := n - 1
	if want != "" {
		for j := n - 1; j >= 0; j-- {
			if p.idle[j].context == want {
				i = j
				break
			}
		}
	}
	c := p.idle[i]
	p.idle = slices.Delete(p.idle, i, i+1)
	c.state = stateActive
	p.km.idle.Dec()
	p.km.active.Inc()
	return c
}

// nextWaiterLocked removes and returns the waiter to serve next: the first
// of the next tenant in round-robin order that is under its cap, or nil.
func (p *pool) nextWaiterLocked() *waiter {
	for k := 0; k < len(p.rr); k++ {
		tq := p.rr[0]
		// Rotate: this tenant goes to the back whether or not it is served.
		copy(p.rr, p.rr[1:])
		p.rr[len(p.rr)-1] = tq
		if !p.underCapLocked(tq) {
			continue
		}
		w := tq.waiters[0]
		p.removeWaiterLocked(tq, 0)
		return w
	}
	return nil
}

// put keeps a connection for reuse, or reports false when the pool is
// closed or a cancel request to it went unanswered, and the caller must
// destroy it instead. A connection with a cancel request in flight is
// parked, still counted against its holder, until the request is answered
// (endCancel): the postmaster signals the backend before it hangs up, so
// only then can no late cancel reach the next holder's statements.
func (p *pool) put(c *Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Over the size (a Reconfigure shrank the pool) the connection goes,
	// freeing its slot.
	if p.closed || c.doomed || c.gen != p.gen || p.open > p.max {
		return false
	}
	if c.cancels > 0 {
		c.state = stateParked
		return true
	}
	p.putLocked(c, c.holder)
	return true
}

// putLocked takes c back from holder and hands it to the next waiter, or
// keeps it idle.
func (p *pool) putLocked(c *Conn, holder *tenantQueue) {
	p.unholdLocked(holder)
	if w := p.nextWaiterLocked(); w != nil {
		w.tq.held++
		c.holder = w.tq
		w.ch <- grant{conn: c}
		return
	}
	c.state = stateIdle
	c.holder = nil
	c.idleSince = time.Now()
	p.idle = append(p.idle, c)
	p.km.active.Dec()
	p.km.idle.Inc()
}

func (p *pool) unholdLocked(tq *tenantQueue) {
	if tq == nil {
		return
	}
	tq.held--
	p.forgetLocked(tq)
}

// destroy closes an active connection and frees its slot.
func (p *pool) destroy(c *Conn) {
	p.mu.Lock()
	p.dropLocked(c)
	p.mu.Unlock()
	c.close()
}

// dropLocked takes c, active or parked, out of the pool and frees its
// holder's slot; the caller closes it once p.mu is released.
func (p *pool) dropLocked(c *Conn) {
	c.state = stateClosed
	delete(p.all, c)
	p.freeSlotLocked(c.holder)
	c.holder = nil
}

// dropSlot frees the slot of a dial that failed; holder is what take
// returned with it, nil for the reaper's dials.
func (p *pool) dropSlot(holder *tenantQueue) {
	p.mu.Lock()
	p.freeSlotLocked(holder)
	p.mu.Unlock()
}

// freeSlotLocked gives an active slot of holder to the next waiter, who
// will dial in it, or returns it to the pool.
func (p *pool) freeSlotLocked(holder *tenantQueue) {
	p.unholdLocked(holder)
	if !p.closed && p.open <= p.max {
		if w := p.nextWaiterLocked(); w != nil {
			w.tq.held++
			w.ch <- grant{}
			return
		}
	}
	p.open--
	p.km.active.Dec()
}

// evict closes the idle connections for which expired reports true, and
// those for which idleTooLong does while more than keep are idle.
func (p *pool) evict(expired, idleTooLong func(*Conn) bool, keep int) {
	var victims []*Conn
	p.mu.Lock()
	n := len(p.idle)
	p.idle = slices.DeleteFunc(p.idle, func(c *Conn) bool {
		if !expired(c) && (n-len(victims) <= keep || !idleTooLong(c)) {
			return false
		}
		c.state = stateClosed
		delete(p.all, c)
		victims = append(victims, c)
		return true
	})
	p.open -= len(victims)
	p.km.idle.Sub(float64(len(victims)))
	p.mu.Unlock()
	for _, c := range victims {
		c.close()
	}
}

// resize applies a new size and per-tenant cap: idle connections over the
// size are closed (the least recently used first), busy ones are closed on
// release (put, freeSlotLocked) until the pool fits, and room the new
// limits make goes to waiters as it would on a release.
func (p *pool) resize(size, perTenant int) {
	var victims []*Conn
	p.mu.Lock()
	p.max, p.perTenant = size, perTenant
	for p.open > p.max && len(p.idle) > 0 {
		c := p.idle[0]
		p.idle = p.idle[1:]
		c.state = stateClosed
		delete(p.all, c)
		p.open--
		p.km.idle.Dec()
		victims = append(victims, c)
	}
	for !p.closed && (len(p.idle) > 0 || p.open < p.max) {
		w := p.nextWaiterLocked()
		if w == nil {
			break
		}
		w.tq.held++
		if c := p.idleLocked(""); c != nil {
			c.holder = w.tq
			w.ch <- grant{conn: c}
			continue
		}
		p.open++
		p.km.active.Inc()
		w.ch <- grant{}
	}
	p.mu.Unlock()
	for _, c := range victims {
		c.close()
	}
}

// reserveIdle takes a slot for the reaper to dial an idle connection in,
// when fewer than minIdle are idle and nobody waits. It returns the Target
// to dial, or nil.
func (p *pool) reserveIdle(minIdle int) *Target {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.target == nil || len(p.idle) >= minIdle || p.open >= p.max || p.waiting > 0 {
		return nil
	}
	p.open++
	p.km.active.Inc()
	return p.target
}

// close marks the pool closed, fails its waiters and closes its idle
// connections. Active ones are closed by Release.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	for _, tq := range p.rr {
		for _, w := range tq.waiters {
			w.ch <- grant{err: ErrClosed}
			p.waiting--
			p.km.waiting.Dec()
		}
		tq.waiters = nil
		p.forgetLocked(tq)
	}
	p.rr = nil
	p.mu.Unlock()
	p.evict(func(*Conn) bool { return true }, nil, 0)
}
