package proxy

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// tenantGates are the admin console's PAUSE and DISABLE (package
// console): a paused tenant's new transactions, and new logins, wait
// until RESUME; a disabled tenant's new logins are refused.
//
// Waiters wait on changed, which is closed and replaced at every change
// (and at KILL and Shutdown, so that a session ended meanwhile stops
// waiting): each then looks again whether it may go on.
type tenantGates struct {
	// closed is set while any tenant is paused or disabled, so that the
	// check every transaction and login makes takes no lock otherwise.
	closed atomic.Bool

	mu       sync.Mutex
	all      bool // PAUSE of every tenant
	paused   map[string]bool
	disabled map[string]bool
	// moving are the tenants a move holds (move.go), apart from PAUSE so
	// that neither's release lifts the other.
	moving map[string]bool
	// waiting counts each tenant's sessions waiting at the gate.
	waiting map[string]int
	changed chan struct{}
}

func newTenantGates() *tenantGates {
	return &tenantGates{paused: make(map[string]bool), disabled: make(map[string]bool), moving: make(map[string]bool),
		waiting: make(map[string]int), changed: make(chan struct{})}
}

// wakeLocked wakes every waiter to look again, and updates closed.
func (g *tenantGates) wakeLocked() {
	g.closed.Store(g.all || len(g.paused) > 0 || len(g.disabled) > 0 || len(g.moving) > 0)
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *tenantGates) wake() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.wakeLocked()
}

// setPaused pauses or resumes tenant ("": every tenant; resuming every tenant
// lifts the tenants' own pauses too).
func (g *tenantGates) setPaused(tenant string, on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case tenant != "" && on:
		g.paused[tenant] = true
	case tenant != "":
		delete(g.paused, tenant)
	case on:
		g.all = true
	default:
		g.all = false
		clear(g.paused)
	}
	g.wakeLocked()
}

// setMoving holds or releases tenant for its move.
func (g *tenantGates) setMoving(tenant string, on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if on {
		g.moving[tenant] = true
	} else {
		delete(g.moving, tenant)
	}
	g.wakeLocked()
}

func (g *tenantGates) setDisabled(tenant string, on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if on {
		g.disabled[tenant] = true
	} else {
		delete(g.disabled, tenant)
	}
	g.wakeLocked()
}

// admit refuses a login of a disabled tenant.
func (g *tenantGates) admit(tenant string) error {
	if !g.closed.Load() {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.disabled[tenant] {
		return pgerr.Errorf(pgerr.CodeTenantUnavailable, "tenant %q is disabled by an operator and accepts no new connections", tenant)
	}
	return nil
}

// wait returns once tenant is not paused, or with an error when ctx ends
// or stop reports the session is ending. held, when not nil, is set while
// it waits.
func (g *tenantGates) wait(ctx context.Context, tenant string, stop func() bool, held *atomic.Bool) error {
	if !g.closed.Load() {
		return nil
	}
	g.mu.Lock()
	if !g.shut(tenant) {
		g.mu.Unlock()
		return nil
	}
	g.waiting[tenant]++
	if held != nil {
		held.Store(true)
	}
	defer func() {
		if held != nil {
			held.Store(false)
		}
		g.mu.Lock()
		if g.waiting[tenant]--; g.waiting[tenant] <= 0 {
			delete(g.waiting, tenant)
		}
		g.mu.Unlock()
	}()
	for g.shut(tenant) {
		ch := g.changed
		g.mu.Unlock()
		if stop != nil && stop() {
			return errShuttingDown
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		g.mu.Lock()
	}
	g.mu.Unlock()
	return nil
}

// shut reports whether tenant's gate is closed; under mu.
func (g *tenantGates) shut(tenant string) bool { return g.all || g.paused[tenant] || g.moving[tenant] }

// state reports tenant's pause, disable and waiters.
func (g *tenantGates) state(tenant string) (paused, disabled bool, waiting int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.all || g.paused[tenant], g.disabled[tenant], g.waiting[tenant]
}
