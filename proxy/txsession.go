package proxy

import (
	"bufio"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
	"github.com/tenantproxy/tenantproxy/pool"
)

// bindState is how a transaction-mode client holds a server connection.
//
// A client starts unbound. The first message of a transaction binds a
// connection (bound) and is written to it; the client loop then relays
// the replies itself (inline) while the client waits for them, which needs
// no second goroutine. When every reply owed is relayed and the
// ReadyForQuery leaves the connection idle, it goes back to the pool
// (unbound); when a transaction stays open, the connection stays bound
// with nobody reading it until the client's next message (bound).
//
// When the client goes on sending while the server answers, a relay
// goroutine reads the server until the binding ends: for pipelined
// requests and batches left open without Sync (background), and for COPY
// FROM STDIN after the server's CopyInResponse (copying), where the client
// loop forwards the COPY data.
//
// Whoever reads the server may end the session (server lost, client write
// failed, kill): the binding is given up and the state is ended, which the
// client loop sees at its next message or wake. ended is final.
type bindState uint8

const (
	unbound bindState = iota
	bound
	inline
	background
	copying
	ended
)

// relaying reports whether a goroutine other than the client loop reads
// the bound connection.
func (s bindState) relaying() bool { return s == background || s == copying }

// txSession is a transaction-mode client: server connections are bound
// per transaction (bindState). The client loop is the connection's
// handler goroutine; it reads client messages, binds, rewrites prepared
// statements (rewriter) and writes to the server in one write per batch.
//
// Writes to the client belong to the relay goroutine while one runs and
// to the client loop otherwise: the relayer writes the last reply of a
// transaction before it unbinds.
type txSession struct {
	sessionBase
	backends txBackends
	target   *pool.TxTarget

	mu sync.Mutex
	// state and server (the bound connection, nil unless bound) change
	// together, under mu. Only the client loop binds; the reader of the
	// server unbinds.
	state  bindState
	server *pool.Conn
	// endErr is why the session ended; written with state = ended.
	endErr error
	// cancelling: a cancel request of the client's is in flight
	// (cancel.go). Under mu.
	cancelling bool
	// partial: extended-protocol messages were sent since the last Sync,
	// so the server is mid-batch even when idle. Under mu.
	partial bool
	// replies are what the bound connection owes, in order.
	replies replyQueue
	// wg waits for the relay goroutine.
	wg sync.WaitGroup

	// The reader of the server's own, kept across the relays of one
	// binding: swallow counts setup replies (ReadyForQuery-terminated)
	// still to come before the client's (written under mu too: a cancel
	// request reads it, startCancel); status is the last transaction
	// status.
	swallow int
	status  byte
	// epoch counts bindings (the rewriter's unnamed statement is known to
	// be on the bound connection only in the binding that parsed it).
	epoch uint64

	// clientGone is set when the client loop has returned.
	clientGone atomic.Bool

	// settings are the client's tracked session settings (txsettings.go).
	settings trackedSettings

	// Client loop only.
	stmts *rewriter
	// skipping: between transactions, a refused Parse or a batch that
	// could not get a server connection drops messages up to the next
	// Sync, which is answered with skipErr.
	skipping   bool
	skipErr    error
	in, out, w []byte
	clientScan pgwire.Scanner // reads the client
	// relayScan reads the bound connection; the reader of the server's
	// own.
	relayScan pgwire.Scanner
	// first is what an idle client sent first, read without a pooled
	// reader (idleRead).
	first idlePrefix
	// idleTx times an open transaction waiting for the client.
	idleTx idleInTx
	// pin keeps the binding across transactions (txpin.go).
	pin txPin
	// route follows the tenant's moves (move.go).
	route movedRoute

	// parkToken names the session in Server.parked while it is parked, 0
	// otherwise; under the parking's lock (park.go).
	parkToken uint64
	// closed and uncount are run's, for whichever goroutine ends the
	// session.
	closed, uncount func()
}

// run relays until the session ends or parks (park.go), on the
// connection's handler goroutine.
func (tx *txSession) run(closed func()) {
	tx.closed, tx.uncount = closed, tx.counted()
	sc := &tx.clientScan
	sc.SetMaxBody(tx.maxMsg)
	sc.WholeAll()
	sc.SetBuffers(&messageBuffers{budget: tx.srv.buffers, copies: txCopies})
	tx.serve(false)
}

// end gives back what the session holds once its client loop has
// returned with cerr, on whichever goroutine ran it last.
func (tx *txSession) end(cerr error) {
	tx.clientGone.Store(true)
	tx.mu.Lock()
	c, st := tx.server, tx.state
	if c != nil && st.relaying() {
		interruptRead(c.NetConn())
	}
	tx.mu.Unlock()
	// Waited for even when the binding is over: a relayer that ended it
	// (a kill, the server lost) may still be writing the client its last
	// error, and the client is closed after this.
	tx.wg.Wait()
	if !st.relaying() && c != nil {
		// Left with a transaction open and no relayer: all replies owed
		// were relayed, nothing is buffered.
		tx.serverStopped(c, os.ErrDeadlineExceeded, true)
	}
	tx.unpin()
	reason := cerr
	if err, ok := tx.endReason(); ok {
		reason = err
	} else if clientsFault(cerr) {
		// Nobody else writes to the client now.
		tx.client.Write(encodeError(cerr, fatal))
	}
	tx.ended(reason, zap.String("pool_mode", PoolTransaction))
	tx.uncount()
	tx.closed()
}

// drain ends the session when no transaction is open: now if none is
// bound, else when the transaction's connection goes back to the pool.
func (tx *txSession) drain() {
	tx.draining.Store(true)
	tx.wakeClient()
	tx.wakePinned()
}

// kill ends the session now with 57P01.
func (tx *txSession) kill() {
	tx.killed.Store(true)
	tx.client.SetWriteDeadline(time.Now().Add(killGrace))
	tx.wakeClient()
	tx.mu.Lock()
	if tx.server != nil {
		tx.server.NetConn().SetDeadline(pastDeadline)
	}
	tx.mu.Unlock()
}

// endReason returns why the session ended, when the reader of the server
// ended it.
func (tx *txSession) endReason() (error, bool) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.endErr, tx.state == ended
}

func (tx *txSession) isBound() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.server != nil
}

// bind makes c the bound connection of a new transaction, whose setup
// replies (queries ReadyForQuery-terminated ones) come first. It reports
// false, binding nothing, once the session has ended: ended is final.
func (tx *txSession) bind(c *pool.Conn, queries int) bool {
	tx.mu.Lock()
	if tx.state == ended {
		tx.mu.Unlock()
		return false
	}
	tx.state, tx.server = bound, c
	tx.epoch++
	tx.swallow, tx.status = queries, 'I'
	tx.mu.Unlock()
	return true
}

// unbind gives up the binding of c; it reports false if c is no longer
// bound (someone else gave it up).
func (tx *txSession) unbind(c *pool.Conn) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.unbindLocked(c, false)
}

// unbindIfIdle gives up the binding of c if the client has nothing in
// flight on it.
func (tx *txSession) unbindIfIdle(c *pool.Conn) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.unbindLocked(c, true)
}

func (tx *txSession) unbindLocked(c *pool.Conn, onlyIdle bool) bool {
	if tx.server != c || (onlyIdle && (tx.partial || tx.replies.owed() > 0)) {
		return false
	}
	tx.state, tx.server = unbound, nil
	tx.partial = false
	tx.replies.clear()
	return true
}

// fail ends the session for the reader of the server: c is given up in
// the same step, so the client loop can never bind another connection to
// a session that has ended; it is woken to end. The caller releases c and
// then may write a last error to the client, which is still its own.
func (tx *txSession) fail(c *pool.Conn, err error) {
	tx.mu.Lock()
	tx.unbindLocked(c, false)
	tx.state, tx.endErr = ended, err
	tx.mu.Unlock()
	tx.wakeClient()
}

// giveBack returns c to the pool if the client has nothing in flight on
// it (a pinned c only when the session is to end: keepPinned), and wakes
// the client loop if the session is to end with this transaction.
func (tx *txSession) giveBack(c *pool.Conn) bool {
	if tx.keepPinned() || !tx.unbindIfIdle(c) {
		return false
	}
	tx.releaseIdle(c)
	if tx.draining.Load() || tx.killed.Load() {
		tx.wakeClient()
	}
	return true
}

// owedNothing reports whether every reply the client is owed was relayed.
func (tx *txSession) owedNothing() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return !tx.partial && tx.replies.owed() == 0
}

// serverStopped handles the bound connection's read failing: a wake (the
// client left, a kill) or the server gone. more means relay on (a wake
// that found the session going on).
func (tx *txSession) serverStopped(c *pool.Conn, err error, boundary bool) (more bool) {
	if errors.Is(err, os.ErrDeadlineExceeded) && !tx.killed.Load() {
		if !tx.clientGone.Load() {
			if boundary && tx.status == 'I' && tx.isPinned() && tx.giveBack(c) {
				return false // drained while idle (wakePinned)
			}
			resumeRead(c.NetConn())
			// A final reason may have come with the wake just cleared.
			if tx.clientGone.Load() || tx.killed.Load() {
				interruptRead(c.NetConn())
			}
			return true
		}
		tx.clientLeft(c, boundary)
		return false
	}
	switch {
	case tx.killed.Load():
		tx.fail(c, tx.killError())
		tx.backends.ReleaseTx(c, false)
		if boundary {
			tx.client.Write(encodeError(tx.killError(), fatal))
		}
	case tx.clientGone.Load():
		tx.unbind(c)
		tx.backends.ReleaseTx(c, false)
	default:
		tx.fail(c, errors.Join(errServerLost, err))
		tx.backends.ReleaseTx(c, false)
		if boundary {
			tx.client.Write(encodeError(errServerLost, fatal))
		}
	}
	return false
}

// clientLeft gives back c after the client left mid-transaction or
// pinned: kept if it is at rest (rolled back and reset unless idle and
// unpinned), else closed.
func (tx *txSession) clientLeft(c *pool.Conn, boundary bool) {
	tx.mu.Lock()
	quiet := boundary && !tx.partial && tx.replies.owed() == 0
	pinned := tx.pin.pinned.Load()
	tx.mu.Unlock()
	tx.unbind(c)
	if quiet && tx.status == 'I' && !pinned {
		tx.releaseIdle(c)
		return
	}
	// Release rolls back and resets (DISCARD ALL): the context goes too,
	// and the next holder sets it again.
	tx.backends.Release(c, quiet)
}

// txReaders holds the read buffers (relayBufSize) of transaction-mode
// clients and bindings while a message is in flight: an idle client holds
// none, only its idlePrefix. BenchmarkIdleSessionMemory's loop run in
// transaction mode with 1,000 clients: proxy heap per idle client ~19.2
// kB with a reader per client and per binding, ~3.3 kB pooled.
var txReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, relayBufSize) }}

func getTxReader(r interface{ Read([]byte) (int, error) }) *bufio.Reader {
	b := txReaders.Get().(*bufio.Reader)
	b.Reset(r)
	return b
}

func putTxReader(r *bufio.Reader) {
	r.Reset(nil)
	txReaders.Put(r)
}
