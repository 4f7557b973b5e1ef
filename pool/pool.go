package pool

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// pool is the connections of one key. Its invariant, under mu: open counts
// every connection that holds one of the max slots (idle, in use, or being
// dialled), and waiters is non-empty only while idle is empty, because a
// released connection or a freed slot goes to the first waiter before
// anything else.
type pool struct {
	key poolKey
	max int
	km  keyMetrics

	mu      sync.Mutex
	idle    []*Conn // stack: the most recently released on top
	open    int
	waiters []*waiter // FIFO
	closed  bool
}

// grant is what a waiter is woken with: a reset connection, permission to
// dial in a slot already counted for it (conn == nil, err == nil), or the
// reason to give up.
type grant struct {
	conn *Conn
	err  error
}

type waiter struct {
	ch chan grant // buffered 1: granting never blocks under mu
}

// take returns an idle connection, or nil meaning the caller holds a slot
// and must dial (and on failure call dropSlot), or an error when ctx ended
// while waiting or the pool closed.
func (p *pool) take(ctx context.Context) (*Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		c.state = stateActive
		p.km.idle.Dec()
		p.km.active.Inc()
		p.mu.Unlock()
		return c, nil
	}
	if p.open < p.max {
		p.open++
		p.km.active.Inc()
		p.mu.Unlock()
		return nil, nil
	}
	w := &waiter{ch: make(chan grant, 1)}
	p.waiters = append(p.waiters, w)
	inUse := p.open
	p.mu.Unlock()

	select {
	case g := <-w.ch:
		return g.conn, g.err
	case <-ctx.Done():
	}
	p.mu.Lock()
	if i := slices.Index(p.waiters, w); i >= 0 {
		p.waiters = slices.Delete(p.waiters, i, i+1)
		p.mu.Unlock()
	} else {
		// Granted while giving up: pass the grant on rather than lose a slot.
		g := <-w.ch
		switch {
		case g.conn != nil:
			p.putLocked(g.conn)
		case g.err == nil:
			p.freeSlotLocked()
		}
		p.mu.Unlock()
	}
	return nil, fmt.Errorf("%w (%d of %d connections to %s as %s in use): %w",
		ErrWaitTimeout, inUse, p.max, p.key.database, p.key.user, context.Cause(ctx))
}

// put keeps a reset connection for reuse, or reports false when the pool is
// closed and the caller must destroy it instead.
func (p *pool) put(c *Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.putLocked(c)
	return true
}

func (p *pool) putLocked(c *Conn) {
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = slices.Delete(p.waiters, 0, 1)
		w.ch <- grant{conn: c}
		return
	}
	c.state = stateIdle
	c.idleSince = time.Now()
	p.idle = append(p.idle, c)
	p.km.active.Dec()
	p.km.idle.Inc()
}

// destroy closes an active connection and frees its slot.
func (p *pool) destroy(c *Conn) {
	p.mu.Lock()
	c.state = stateClosed
	p.freeSlotLocked()
	p.mu.Unlock()
	c.close()
}

// dropSlot frees the slot of a dial that failed.
func (p *pool) dropSlot() {
	p.mu.Lock()
	p.freeSlotLocked()
	p.mu.Unlock()
}

// freeSlotLocked gives an active slot to the first waiter, who will dial
// in it, or returns it to the pool.
func (p *pool) freeSlotLocked() {
	if len(p.waiters) > 0 && !p.closed {
		w := p.waiters[0]
		p.waiters = slices.Delete(p.waiters, 0, 1)
		w.ch <- grant{}
		return
	}
	p.open--
	p.km.active.Dec()
}

// evict closes the idle connections for which stale reports true.
func (p *pool) evict(stale func(*Conn) bool) {
	var victims []*Conn
	p.mu.Lock()
	p.idle = slices.DeleteFunc(p.idle, func(c *Conn) bool {
		if !stale(c) {
			return false
		}
		c.state = stateClosed
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

// close marks the pool closed, fails its waiters and closes its idle
// connections. Active ones are closed by Release.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	for _, w := range p.waiters {
		w.ch <- grant{err: ErrClosed}
	}
	p.waiters = nil
	p.mu.Unlock()
	p.evict(func(*Conn) bool { return true })
}
