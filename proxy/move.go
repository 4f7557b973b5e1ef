package proxy

import (
	"context"
	"crypto/rand"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
)

// This instance's part in tenant moves (catalog.Move, README "Moving
// tenants"): while a move switches a tenant, the instance holds the
// tenant's new transactions and logins at its gate (pause.go), ends the
// sessions that keep server state on the source at their next idle
// moment, and tells the catalog once nothing of the tenant's is in
// flight here; when the hold ends, the tenant's sessions take the new
// route at their next transaction.

// moveCoordinator is the optional capability of a Directory to take part
// in moves; *catalog.Catalog has it.
type moveCoordinator interface {
	Heartbeat(ctx context.Context, instance string) error
	LeaveInstance(ctx context.Context, instance string) error
	Holds(ctx context.Context) ([]catalog.Hold, error)
	AckHold(ctx context.Context, instance string, h catalog.Hold) error
	WatchMoves(fn func(tenant string)) (stop func())
	Forget(subdomain string)
}

var _ moveCoordinator = (*catalog.Catalog)(nil)

// reconnector is the optional capability of Backends to close a
// database's pooled connections; *pool.Manager has it.
type reconnector interface {
	Reconnect(database string)
}

var _ reconnector = (*pool.Manager)(nil)

const (
	// heartbeatInterval is how often the instance tells the catalog it is
	// alive (catalog's instanceTTL is five of them).
	heartbeatInterval = time.Second
	// holdPoll is how often a hold not yet acknowledged looks again
	// whether the tenant's transactions have ended.
	holdPoll = 5 * time.Millisecond
	// unconfirmedHold releases every hold when the catalog could not be
	// read for this long: the catalog's own expiry of a hold whose mover
	// died (30 s) cannot reach an instance cut off from it, and the
	// source's fence, not the hold, keeps the tenant's writes safe.
	unconfirmedHold = 30 * time.Second
)

// moves counts each tenant's released holds: a session that saw another
// count routes its tenant afresh.
type moves struct {
	// epochs is replaced, never changed, under mu: every transaction reads
	// it, without a lock; releases are rare.
	mu     sync.Mutex
	epochs atomic.Pointer[map[string]uint64]
	// stop ends the instance's part in moves and waits for it.
	stop func()
}

func (m *moves) epoch(tenant string) uint64 {
	if e := m.epochs.Load(); e != nil {
		return (*e)[tenant]
	}
	return 0
}

func (m *moves) bump(tenant string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := map[string]uint64{}
	if e := m.epochs.Load(); e != nil {
		next = maps.Clone(*e)
	}
	next[tenant]++
	m.epochs.Store(&next)
}

// movedRoute is what a transaction-mode session needs to follow its
// tenant to a new place.
type movedRoute struct {
	// epoch is the tenant's moves.epoch its route was resolved at.
	epoch uint64
	// tail is the set-up after the route's own: the plan's statement
	// timeout and the client's start-up settings.
	tail []string
	// entering: the session is starting a transaction, past its gate or
	// about to look at it; cleared once bound or failed.
	entering atomic.Bool
}

// errMoving is what a session holding server state on a moving tenant's
// source is told at its next idle moment.
func errMoving(tenant string) *pgerr.Error {
	return pgerr.Errorf(pgerr.CodeShuttingDown, "terminating connection because tenant %q is being moved to another server; reconnect to continue", tenant)
}

// joinMoves starts the instance's part in moves when dir can take it.
func (s *Server) joinMoves(dir any) {
	mc, ok := dir.(moveCoordinator)
	if !ok {
		s.moves.stop = func() {}
		return
	}
	host, _ := os.Hostname()
	instance := host + "/" + rand.Text()[:8]
	ctx, cancel := context.WithCancel(context.Background())
	wake := make(chan struct{}, 1)
	unwatch := mc.WatchMoves(func(string) {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.followHolds(ctx, mc, instance, wake)
	}()
	s.moves.stop = func() {
		unwatch()
		cancel()
		<-done
		lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer lcancel()
		if err := mc.LeaveInstance(lctx, instance); err != nil {
			s.log.Warn("moves will wait for this instance until its heartbeat expires", zap.Error(err))
		}
	}
}

// heldTenant is a hold this instance applies, and whether it said so.
type heldTenant struct {
	hold  catalog.Hold
	acked bool
}

// followHolds beats, reads the holds the catalog asks for and applies
// them until ctx ends.
func (s *Server) followHolds(ctx context.Context, mc moveCoordinator, instance string, wake <-chan struct{}) {
	held := map[string]*heldTenant{}
	var beat time.Time
	read := time.Now()
	for {
		if time.Since(beat) >= heartbeatInterval {
			err := mc.Heartbeat(ctx, instance)
			if err == nil {
				beat = time.Now()
			} else if ctx.Err() == nil && time.Since(beat) < 2*heartbeatInterval {
				// Once per outage: beat keeps the last success.
				s.log.Warn("catalog heartbeat failed: moves switch without waiting for this instance", zap.Error(err))
			}
		}
		if holds, err := mc.Holds(ctx); err == nil {
			read = time.Now()
			s.applyHolds(mc, held, holds)
		} else if len(held) > 0 && time.Since(read) > unconfirmedHold {
			s.log.Warn("releasing moving tenants: the catalog could not be read", zap.Error(err))
			s.applyHolds(mc, held, nil)
		}
		pending := false
		for tenant, h := range held {
			if h.acked {
				continue
			}
			if !s.settle(tenant) {
				pending = true
				continue
			}
			if err := mc.AckHold(ctx, instance, h.hold); err == nil {
				h.acked = true
				s.log.Info("tenant held for its move", zap.String("tenant", tenant), zap.Int64("move", h.hold.Move))
			}
		}
		delay := heartbeatInterval
		if pending {
			delay = holdPoll
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-time.After(delay):
		}
	}
}

// applyHolds holds the tenants newly in holds and releases those no
// longer in them: their cached row is dropped and their epoch counted
// before the gate opens, so that what it lets through routes afresh.
func (s *Server) applyHolds(mc moveCoordinator, held map[string]*heldTenant, holds []catalog.Hold) {
	for _, h := range holds {
		if cur, ok := held[h.Tenant]; ok && cur.hold == h {
			continue
		}
		held[h.Tenant] = &heldTenant{hold: h}
		s.gates.setMoving(h.Tenant, true)
	}
	for tenant, h := range held {
		if slices.ContainsFunc(holds, func(h catalog.Hold) bool { return h.Tenant == tenant }) {
			continue
		}
		delete(held, tenant)
		mc.Forget(tenant)
		s.moves.bump(tenant)
		// A database-tier source's pool is the tenant's alone: its idle
		// connections go now, not at the pool's idle timeout. (Those of
		// the shared databases serve other tenants, and take the next
		// holder's context anyway.) A hold released without a switch
		// costs the tenant fresh connections, nothing else.
		if r, ok := s.backends.(reconnector); ok && h.hold.From.Tier == catalog.TierDatabase {
			r.Reconnect(h.hold.From.Database)
		}
		s.gates.setMoving(tenant, false)
		s.log.Info("tenant released after its move", zap.String("tenant", tenant))
	}
}

// settle reports whether none of tenant's sessions is in a transaction
// or keeps server state on the source. Those that keep state (session
// mode, pinned connections) are asked to end at their next idle moment.
func (s *Server) settle(tenant string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	quiet := true
	for t := range s.conns {
		ts, ok := t.sess.(tenantSession)
		if !ok || ts.base().tenant != tenant {
			continue
		}
		tx, ok := ts.(*txSession)
		if ok && !tx.isPinned() {
			if tx.isBound() || (tx.route.entering.Load() && !tx.held.Load()) {
				quiet = false
			}
			continue
		}
		quiet = false
		if b := ts.base(); !b.draining.Load() {
			b.killedBy.CompareAndSwap(nil, errMoving(tenant))
			ts.drain()
		}
	}
	return quiet
}

// followMoved returns t as the catalog has it now when a hold of the
// tenant was released since its epoch was read.
func (s *Server) followMoved(ctx context.Context, t *catalog.Tenant, epoch uint64) (*catalog.Tenant, uint64, error) {
	now := s.moves.epoch(t.Subdomain)
	if now == epoch {
		return t, epoch, nil
	}
	fresh, err := s.resolver.Tenant(ctx, t.Subdomain)
	if err != nil {
		return nil, 0, err
	}
	return fresh, now, nil
}

// followMove re-routes the session when its tenant was moved since its
// route was resolved: the new server, database and role, the tier's
// set-up and rules, then the tracked settings as before. The client
// loop calls it while unbound.
func (tx *txSession) followMove() error {
	if tx.srv.moves.epoch(tx.tenant) == tx.route.epoch {
		// Every transaction passes here: no allocation.
		return nil
	}
	t, epoch, err := tx.srv.followMoved(tx.srv.ctx, &catalog.Tenant{Subdomain: tx.tenant}, tx.route.epoch)
	if err != nil {
		return err
	}
	rt, err := tx.srv.resolver.Route(tx.srv.ctx, t)
	if err != nil {
		return err
	}
	rules, err := policy.RulesFor(t)
	if err != nil {
		tx.srv.log.Warn("tenant policy settings ignored", zap.String("tenant", t.Subdomain), zap.Error(err))
	}
	tx.mu.Lock()
	defer tx.mu.Unlock()
	base := tx.target.Target
	if tx.settings.base != nil {
		base = *tx.settings.base
	}
	base.Addr, base.Database, base.User, base.Password, base.TLS = rt.Addr, rt.Database, rt.User, rt.Password, rt.TLS
	base.Setup = append(slices.Clip(rt.Setup), tx.route.tail...)
	tx.settings.base = &base
	tx.retarget()
	tx.channels, tx.shared, tx.rules = rt.Channels, t.Tier == catalog.TierShared, rules
	tx.route.epoch = epoch
	return nil
}
