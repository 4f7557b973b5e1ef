package proxy

import (
	"time"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// errIdleInTransaction ends a transaction-mode session whose transaction
// stayed open and idle past Config.IdleInTransactionTimeout, in
// PostgreSQL's words and SQLSTATE.
var errIdleInTransaction = pgerr.Errorf(pgerr.CodeIdleInTransaction, "terminating connection due to idle-in-transaction timeout")

// idleInTx is the transaction-mode client loop's timer of an open
// transaction left idle. The proxy times it, not PostgreSQL: the tenant
// could lift a server setting (SET in its own transaction), never this.
// It is a read deadline on the client, set while a connection is bound
// with every reply relayed and the transaction open (status T or E), so
// it costs no goroutine and no timer of its own. A binding whose replies
// a relay goroutine reads (background: the client went on sending before
// its answers came) is not timed: the client loop would have to be woken
// when the relayer sees the transaction go idle, and the last write to the
// client is then the relayer's. Client loop only.
type idleInTx struct {
	limit time.Duration // <= 0: off
	// deadline is when the current silence ends the session; zero while
	// no open transaction waits for the client or once a message came.
	deadline time.Time
	armed    bool
}

// armIdleInTx sets, before the client loop reads, the deadline of an open
// transaction that waits for the client, or clears it when none does. A
// wake (interruptRead) that raced with it is given again.
func (tx *txSession) armIdleInTx() {
	it := &tx.idleTx
	if it.limit <= 0 {
		return
	}
	tx.mu.Lock()
	open := tx.state == bound && (tx.status == 'T' || tx.status == 'E') && !tx.partial && tx.replies.owed() == 0
	tx.mu.Unlock()
	switch {
	case open:
		if it.deadline.IsZero() {
			it.deadline = time.Now().Add(it.limit)
		}
		tx.client.SetReadDeadline(it.deadline)
	case it.armed:
		it.deadline = time.Time{}
		resumeRead(tx.client)
	default:
		return
	}
	it.armed = open
	// The deadline just set may have replaced a wake: look at its reasons
	// again, as woken does.
	if tx.wakePending() {
		interruptRead(tx.client)
	}
}

// heardClient restarts the idle clock: the client sent a message.
func (tx *txSession) heardClient() { tx.idleTx.deadline = time.Time{} }

// idleInTxExpired reports whether a read that failed on its deadline
// failed on the idle-in-transaction one. It then tells the client (the
// client loop writes to it: no relayer runs while the transaction waits),
// and the session ends; run gives the connection back, rolled back
// (clientLeft).
func (tx *txSession) idleInTxExpired() bool {
	it := &tx.idleTx
	if !it.armed || it.deadline.IsZero() || time.Now().Before(it.deadline) {
		return false
	}
	tx.client.Write(encodeError(errIdleInTransaction, fatal))
	return true
}
