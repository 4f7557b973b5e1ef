package proxy

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
)

// Pinning keeps session state a transaction-mode client asked for
// (policy.TxVerdict.Pin: temporary objects, WITH HOLD cursors, LISTEN,
// session advisory locks, SQL PREPARE) usable in its later transactions
// without letting anyone else see it: the statement pins the client to the
// server connection it runs on, which then stays bound, as in session
// mode, until the client disconnects. Only then does it go back to the
// pool, reset like a session-mode connection (ROLLBACK, DISCARD ALL, the
// reseed; closed if that fails), so the next holder finds none of it.
//
// A pinned binding is read by a relay goroutine for as long as it lasts
// (background), so that what the server sends between transactions,
// notifications above all, reaches the idle client at once; the open
// transactions of a pinned client cannot be timed by the client loop's
// read deadline (idletx.go) and have a timer of their own instead
// (timePinnedTx). A drain ends a pinned session when it is idle between
// transactions, as it does in session mode.
//
// Pinning is one way: nothing a client runs unpins it early, since
// proving that every pinned kind of state is gone would need the proxy to
// track each of them. A pinned connection is one a pool shares with other
// clients no more, so a tenant may keep at most pinLimit of them at once
// per proxy; past it the statement that would pin fails with 53400
// (pgerr.CodeTooManyPinned) and the session goes on.
type txPin struct {
	// limit is the tenant's cap on pinned connections (pinLimit), 0 for
	// none; set at connect.
	limit int
	// judged is the verdict of the Query or Parse being handled, from
	// verdict, for pinFor. Client loop only.
	judged policy.TxVerdict
	// pinned: the binding outlives the client's transactions. Set by
	// the client loop under txSession.mu (with the binding it pins), read
	// by the relayer too.
	pinned atomic.Bool
	// idle times an open transaction of a pinned session waiting for the
	// client (timePinnedTx); idleGen counts its armings, so that a timer
	// that fires after the next ReadyForQuery does nothing. Under
	// txSession.mu.
	idle    *time.Timer
	idleGen uint64
}

// pinCounts are the connections each tenant's clients keep pinned, under
// the tenants' caps.
type pinCounts struct {
	mu sync.Mutex
	n  map[string]int
}

// take counts one more pinned connection of tenant unless it has limit
// already (limit 0: no cap).
func (p *pinCounts) take(tenant string, limit int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if limit > 0 && p.n[tenant] >= limit {
		return false
	}
	if p.n == nil {
		p.n = make(map[string]int)
	}
	p.n[tenant]++
	return true
}

// give counts one pinned connection of tenant fewer.
func (p *pinCounts) give(tenant string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[tenant]--; p.n[tenant] <= 0 {
		delete(p.n, tenant)
	}
}

// pinFor pins the session to c when the statement about to be written
// needs it, and clears the proxy's record of the statements on c when the
// statement deallocates: DEALLOCATE ALL drops the proxy's as well, and
// the rewriter prepares again on demand what the record lacks (behind a
// Close of its name, so a statement still there never fails as a
// duplicate). It returns the error the statement fails with instead of
// being written when it would pin one connection too many. Called with
// tx.mu held, for a statement the policy allowed.
func (tx *txSession) pinFor(c *pool.Conn) error {
	v := &tx.pin.judged
	if v.Deallocates {
		c.ForgetStatements()
	}
	if v.Pin == "" || tx.pin.pinned.Load() {
		return nil
	}
	if !tx.srv.pins.take(tx.tenant, tx.pin.limit) {
		return pgerr.Errorf(pgerr.CodeTooManyPinned,
			"%s would pin a server connection to this client, and tenant %q already keeps its limit of %d pinned (setting max_pinned_conns); disconnect a client that uses session state, or connect in session mode",
			v.Pin, tx.tenant, tx.pin.limit)
	}
	tx.pin.pinned.Store(true)
	tx.times.pinned.Add(1)
	return nil
}

// isPinned reports whether the binding outlives the client's
// transactions.
func (tx *txSession) isPinned() bool { return tx.pin.pinned.Load() }

// keepPinned reports whether a binding stays when its transaction ends:
// pinned, until the client leaves or the session drains (or is killed,
// which closes the connection).
func (tx *txSession) keepPinned() bool { return tx.isPinned() && !tx.ending() }

// wakePinned interrupts the relayer's read of a pinned binding, so that a
// drain ends the session while it is idle between transactions
// (serverStopped gives the connection back), as session mode does.
func (tx *txSession) wakePinned() {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.pin.pinned.Load() && tx.server != nil {
		interruptRead(tx.server.NetConn())
	}
}

// timePinnedTx times, for the relayer of a pinned binding at each
// ReadyForQuery, a transaction left open (status T or E): if the client
// still owes the server its next message when IdleInTransactionTimeout
// runs out (no ReadyForQuery since, nothing sent that awaits a reply,
// no batch open), the session is killed with FATAL 25P03 and the
// connection closed, which rolls the transaction back. The limit keeps a
// tenant from holding a snapshot and locks on a shared server for ever,
// pinned or not; the client loop times unpinned sessions (idletx.go).
func (tx *txSession) timePinnedTx() {
	limit := tx.idleTx.limit
	if limit <= 0 || !tx.pin.pinned.Load() {
		return
	}
	tx.mu.Lock()
	defer tx.mu.Unlock()
	tx.pin.idleGen++
	if tx.pin.idle != nil {
		tx.pin.idle.Stop()
		tx.pin.idle = nil
	}
	if tx.status != 'T' && tx.status != 'E' {
		return
	}
	gen := tx.pin.idleGen
	tx.pin.idle = time.AfterFunc(limit, func() {
		tx.mu.Lock()
		expired := tx.pin.idleGen == gen && !tx.partial && tx.replies.owed() == 0
		tx.mu.Unlock()
		if expired {
			tx.killedBy.CompareAndSwap(nil, errIdleInTransaction)
			tx.kill()
		}
	})
}

// pinnedPID is the process id of the server connection the session is
// pinned to, 0 for none.
func (tx *txSession) pinnedPID() uint32 {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if !tx.pin.pinned.Load() || tx.server == nil {
		return 0
	}
	return tx.server.PID()
}

// unpin gives back the session's place under its tenant's cap, once its
// pinned connection was released (reset or closed), and stops its
// idle-in-transaction timer.
func (tx *txSession) unpin() {
	tx.mu.Lock()
	if tx.pin.idle != nil {
		tx.pin.idle.Stop()
	}
	tx.pin.idleGen++
	tx.mu.Unlock()
	if tx.pin.pinned.Swap(false) {
		tx.srv.pins.give(tx.tenant)
		tx.times.pinned.Add(-1)
	}
}

// pinLimit is tenant t's cap on pinned connections: its catalog setting
// {"max_pinned_conns": N} when N is not zero, else def
// (Config.MaxPinnedPerTenant) when not zero, else a quarter of what one
// tenant may hold of a pool of backends (pool.Config.MaxConnsPerTenant,
// or the whole pool when that is uncapped), at least 1: enough for a few
// listeners or sessions with temporary tables, while the rest of the
// tenant's share goes on serving transactions. Negative values mean no
// cap (0).
func pinLimit(t *catalog.Tenant, def int, backends Backends) int {
	n := def
	if len(t.Settings) > 0 {
		var st struct {
			MaxPinned int `json:"max_pinned_conns"`
		}
		// A malformed setting keeps the default rather than lock the
		// tenant out (as poolModeOf does).
		if json.Unmarshal(t.Settings, &st) == nil && st.MaxPinned != 0 {
			n = st.MaxPinned
		}
	}
	switch {
	case n < 0:
		return 0
	case n > 0:
		return n
	}
	pc, ok := backends.(interface{ Config() pool.Config })
	if !ok {
		return 1
	}
	cfg := pc.Config()
	share := cfg.MaxConnsPerTenant
	if share <= 0 {
		share = cfg.MaxConnsPerKey
	}
	return max(share/4, 1)
}
