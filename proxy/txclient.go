package proxy

import (
	"bufio"
	"errors"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/pgwire"
	"github.com/tenantproxy/tenantproxy/pool"
)

// clientLoop reads the client until it leaves or the session ends, or
// returns errIdle when the client stayed idle long enough to park
// (park.go); resumed, its first wait for the client does not park. It
// holds a pooled reader only while the client has bytes buffered.
func (tx *txSession) clientLoop(resumed bool) error {
	sc := &tx.clientScan
	defer sc.Release()
	var src *bufio.Reader
	defer func() {
		if src != nil {
			putTxReader(src)
		}
		tx.first.release()
	}()
	for {
		var m pgwire.Message
		var err error
		tx.armIdleInTx()
		if src == nil {
			if src, err = tx.idleRead(!resumed && tx.mayPark()); err == nil {
				sc.Reset(src, nil)
			} else if err == errIdle {
				return err
			}
			resumed = false
		}
		if err == nil {
			m, err = sc.Next()
		}
		if err != nil {
			if done, err := tx.woken(err); done {
				return err
			}
			continue
		}
		if m.Type == pgwire.Terminate {
			return nil
		}
		tx.heardClient()
		tx.in = m.Bytes
		err = tx.handle(m.Type)
		tx.in = nil // the scanner's, given back by the next call on it
		if err != nil {
			return err
		}
		sc.Forward() // consumed: the scanner has no destination
		if sc.Buffered() == 0 && tx.first.empty() {
			putTxReader(src)
			src = nil
			tx.first.release()
		}
	}
}

// woken handles a failed read of the client: an interrupt (drain, kill,
// the session ended by the reader of the server), the idle-in-transaction
// deadline (idletx.go) or the client's own failure. done means the loop ends with err.
func (tx *txSession) woken(err error) (done bool, _ error) {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return true, err
	}
	if _, ended := tx.endReason(); ended {
		return true, err
	}
	if tx.killed.Load() || tx.draining.Load() {
		if !tx.isBound() {
			tx.client.Write(encodeError(tx.killError(), fatal))
			return true, tx.killError()
		}
		if tx.killed.Load() {
			return true, tx.killError()
		}
	}
	if tx.idleInTxExpired() {
		return true, errIdleInTransaction
	}
	// Woken while a transaction is open; the reader of the server wakes
	// this loop again when it unbinds.
	resumeRead(tx.client)
	if tx.draining.Load() && !tx.isBound() {
		interruptRead(tx.client)
	}
	return false, nil
}

// verdict is why the Query or Parse in tx.in must not run, or "" (also
// for every other message type). The policy gives the rules' reason
// first: what it refuses (SET ROLE, set_config, RESET ALL) is refused in
// session mode too, so transaction mode's hint to connect in session mode
// would be false for it.
func (tx *txSession) verdict(typ byte) string {
	if typ != pgwire.Query && typ != pgwire.Parse {
		return ""
	}
	return tx.verdictTracked(typ)
}

// explain is what the client hears of the refusal of the Query or Parse
// in tx.in.
func (tx *txSession) explain(reason string) error {
	return tx.srv.policy.Explain(pgwire.Statement(tx.in), reason)
}

// handle acts on the client message in tx.in and on every further whole
// message already buffered, writing them to the bound server connection
// in one write, binding one first if needed.
func (tx *txSession) handle(typ byte) error {
	if err, ended := tx.endReason(); ended {
		return err
	}
	if tx.skipping && typ != 'S' {
		return nil
	}
	r := tx.verdict(typ)
	if r == "" && tx.terminates(typ) {
		return tx.terminateSelf()
	}
	tx.out = tx.out[:0]
	if !tx.isBound() {
		if answered, err := tx.unboundMessage(typ, r); answered {
			return err
		}
		if err := tx.acquire(typ); err != nil || !tx.isBound() {
			return err
		}
	}
	tx.mu.Lock()
	c := tx.server
	tx.message(c, typ, r)
	for tx.pipelined() {
		m, _ := tx.clientScan.Next()
		tx.in = m.Bytes
		r := tx.verdict(m.Type)
		if r == "" && tx.terminates(m.Type) {
			r = reasonLateTermination
		}
		tx.message(c, m.Type, r)
	}
	// Written without the lock, so a background relayer can relay (and
	// take the lock for replies it must match) while a big write waits
	// for the server to read: every message above left the server owing
	// a ReadyForQuery or mid-batch (partial), so it cannot unbind c until
	// the server has read this write. A failed write needs no handling
	// here: the reader of the server finds the same failure.
	tx.mu.Unlock()
	c.NetConn().Write(tx.out)
	// Passed on: a long message's buffers go now, not after the replies.
	tx.clientScan.Forward()
	tx.in = nil
	if cap(tx.out) > pgwire.MaxRetained {
		tx.out = nil
	}
	return tx.awaitReplies(c)
}

// pipelined reports whether another whole client message (not Terminate)
// is already buffered: it goes in the same write. Reading it otherwise
// would wait for more.
func (tx *txSession) pipelined() bool {
	if len(tx.in) > pgwire.MaxRetained {
		// A long message goes alone: reading on would give back its
		// buffer, and its charge against MaxBufferedBytes, while its
		// copy in tx.out still waits to be written.
		return false
	}
	typ, ok := tx.clientScan.Peek()
	return ok && typ != pgwire.Terminate
}

// unboundMessage answers, between transactions, what needs no server:
// refusals and the Sync ending a skipped batch. answered means the message
// was dealt with (err is then the session's end, if any).
func (tx *txSession) unboundMessage(typ byte, r string) (answered bool, err error) {
	switch {
	case tx.skipping: // at its Sync
		tx.skipping = false
		return true, tx.answer(tx.skipErr, nonfatal)
	case typ == 'Q' && r != "":
		return true, tx.answer(tx.explain(r), asIs)
	case typ == 'P' && r != "":
		tx.skip(r)
		return true, nil
	case typ == 'F':
		return true, tx.answer(refused(errFastPath), asIs)
	}
	return false, nil
}

// ending reports that the session was drained or killed.
func (tx *txSession) ending() bool { return tx.draining.Load() || tx.killed.Load() }

// acquire binds a server connection for the transaction the client
// message of type typ starts, with its context set-up in tx.out.
func (tx *txSession) acquire(typ byte) error {
	tx.route.entering.Store(true)
	defer tx.route.entering.Store(false)
	// A paused or moving tenant's transactions wait here for RESUME.
	if tx.srv.gates.wait(tx.srv.ctx, tx.tenant, tx.ending, &tx.held) != nil || tx.ending() {
		tx.client.Write(encodeError(tx.killError(), fatal))
		return tx.killError()
	}
	if err := tx.followMove(); err != nil {
		return tx.acquireFailed(typ, err)
	}
	if err := tx.srv.admitTransaction(tx.srv.ctx, tx.base()); err != nil {
		return tx.acquireFailed(typ, err)
	}
	tx.replan()
	start := time.Now()
	// Statements prepared from now on are named for the client's context
	// as it is, tracked settings (search_path) included: a statement of
	// another search_path must not be shared. Those prepared before keep
	// their names and the settings they were prepared under, as
	// PostgreSQL's keep theirs.
	tx.stmts.context = tx.target.Key()
	c, setup, queries, err := tx.backends.AcquireTx(tx.srv.ctx, tx.target)
	if err != nil {
		return tx.acquireFailed(typ, err)
	}
	tx.times.assigned(start)
	readOnly := tx.quotaSetup(typ)
	if readOnly != nil {
		queries++
	}
	if !tx.bind(c, queries) {
		// Its set-up was never sent: not known to be in any context.
		tx.backends.ReleaseTx(c, false)
		err, _ := tx.endReason()
		return err
	}
	tx.out = append(append(tx.out, setup...), readOnly...)
	return nil
}

// awaitReplies relays what the client is owed after a write to c: here,
// when the client has sent a whole request (nothing buffered, no batch
// open) and so waits for the answer; else in the background, since the
// client may go on sending while the server answers.
func (tx *txSession) awaitReplies(c *pool.Conn) error {
	tx.mu.Lock()
	if tx.server != c || tx.state.relaying() {
		tx.mu.Unlock()
		return nil
	}
	if !tx.partial && tx.replies.owed() == 0 {
		// Nothing to answer (the server ignores COPY messages outside a
		// COPY): an idle connection goes back now, an open transaction
		// keeps it.
		idle := tx.status == 'I'
		tx.mu.Unlock()
		if idle {
			tx.giveBack(c)
		}
		return nil
	}
	tx.state = background
	// A pinned binding's relayer reads between transactions too (txpin.go).
	if !tx.partial && tx.clientScan.Buffered() == 0 && tx.first.empty() && !tx.pin.pinned.Load() {
		tx.state = inline
	}
	st := tx.state
	tx.mu.Unlock()
	src := getTxReader(c.NetConn())
	if st == background {
		tx.background(src)
		return nil
	}
	return tx.relayInline(c, src)
}

// relayInline relays on the client loop until the client is owed nothing
// more, handing over to a relay goroutine at a COPY.
func (tx *txSession) relayInline(c *pool.Conn, src *bufio.Reader) error {
	switch tx.relay(src, true) {
	case relayFailed:
		putTxReader(src)
		err, _ := tx.endReason()
		return err
	case relayCopy:
		tx.mu.Lock()
		tx.state = copying
		tx.mu.Unlock()
		tx.background(src)
		return nil
	case relayPaused:
		tx.mu.Lock()
		if tx.server == c {
			tx.state = bound
		}
		tx.mu.Unlock()
	}
	putTxReader(src)
	return nil
}

// background relays the rest of the binding in a goroutine of its own,
// from src (the binding's reader, which it puts back).
func (tx *txSession) background(src *bufio.Reader) {
	tx.wg.Add(1)
	go func() {
		defer tx.wg.Done()
		tx.relay(src, false)
		putTxReader(src)
	}()
}

// answer ends a client request that never reached a server: err as an
// ErrorResponse, then ReadyForQuery.
func (tx *txSession) answer(err error, severity int) error {
	tx.w, _ = errorResponse(err, severity).Encode(tx.w[:0])
	tx.w, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(tx.w)
	_, werr := tx.client.Write(tx.w)
	return werr
}

// acquireFailed answers a request that could not get a server connection:
// 53400 after the wait timeout, 08006 when the server cannot be reached.
// The session goes on: a later transaction may find one.
func (tx *txSession) acquireFailed(typ byte, err error) error {
	err = fromPool(err)
	tx.srv.countRefusal(tx.tenant, err)
	ce := classify(err)
	if ce.code == pgerr.CodeShuttingDown {
		tx.client.Write(encodeError(errShuttingDown, fatal))
		return errShuttingDown
	}
	if !ce.transient {
		tx.srv.log.Warn("transaction could not get a server connection", zap.String("tenant", tx.tenant), zap.Error(err))
	}
	if typ == pgwire.Query || typ == pgwire.Sync {
		return tx.answer(err, nonfatal)
	}
	tx.skipping, tx.skipErr = true, err
	return nil
}

// skip drops messages up to the next Sync, which is answered with the
// refusal (like PostgreSQL after an error in the extended protocol).
func (tx *txSession) skip(reason string) {
	tx.skipping, tx.skipErr = true, tx.explain(reason)
}

// message appends the client message in tx.in to tx.out for server
// connection c; refused statements become their stand-ins (refusal.go),
// and channels and catalogs are rewritten (rewrite). refusal
// is tx.verdict(typ). Called with tx.mu held.
func (tx *txSession) message(c *pool.Conn, typ byte, refusal string) {
	refusal = tx.capSettings(refusal)
	var why error
	if refusal != "" {
		why = tx.explain(refusal)
	} else if q := tx.srv.quotaRefusal(tx.tenant, tx.limits, tx.quotaKind(), typ, tx.in); q != nil {
		why, tx.settings.judged = q, nil
	} else if in, err := tx.rewrite(tx.in, 0); err != nil {
		why = err
	} else {
		tx.in = in
	}
	switch typ {
	case pgwire.Query:
		if why != nil {
			tx.refuse(why)
			return
		}
		if why := tx.pinFor(c); why != nil {
			tx.refuse(why)
			return
		}
		tx.queries.Inc()
		in := tx.deallocate(tx.in)
		if load, r := tx.loadQuery(pgwire.Statement(in)); load != nil {
			tx.replies.push(r)
			in = load
		}
		tx.replies.push(reply{kind: replyReady})
		tx.out = append(tx.out, in...)
		if len(tx.settings.judged) > 0 {
			tx.sentSettings(tx.replies.readyCount())
		}
	case pgwire.Sync:
		tx.partial = false
		tx.replies.push(reply{kind: replyReady})
		tx.out = append(tx.out, tx.in...)
	case pgwire.FunctionCall:
		tx.refuse(refused(errFastPath))
	case pgwire.Parse:
		tx.partial = true
		if why == nil {
			if name, dup := tx.stmts.duplicate(tx.in, tx.replies.answered()); dup {
				why = pgerr.Errorf(pgerr.CodeDuplicatePreparedStatement, "prepared statement \"%s\" already exists", name)
			} else {
				why = tx.pinFor(c)
			}
		}
		if why != nil {
			// The server fails the stand-in and skips the rest of the
			// batch up to Sync.
			tx.replies.push(reply{kind: replyRefused, refusal: why})
			standIn, unnamed := standInParse(tx.in)
			if unnamed {
				tx.stmts.dropUnnamed()
				tx.settings.unnamed = nil
			}
			tx.out = append(tx.out, standIn...)
			return
		}
		tx.followUnnamed(typ)
		tx.out = tx.stmts.rewrite(tx.out, tx.in, c, tx.epoch, &tx.replies)
	case pgwire.CopyData, pgwire.CopyDone, pgwire.CopyFail:
		// The Query that started the COPY is still owed its
		// ReadyForQuery.
		tx.out = append(tx.out, tx.in...)
	default:
		// Bind, Describe, Close, Execute, Flush and the rest: mid-batch
		// until a Sync says otherwise.
		tx.partial = true
		if typ == pgwire.Execute {
			tx.queries.Inc()
		}
		tx.followUnnamed(typ)
		tx.out = tx.stmts.rewrite(tx.out, tx.in, c, tx.epoch, &tx.replies)
	}
}

// refuse sends the stand-in of a refused Query or FunctionCall, which the
// server answers with its error and a ReadyForQuery.
func (tx *txSession) refuse(why error) {
	tx.replies.push(reply{kind: replyRefused, refusal: why})
	tx.replies.push(reply{kind: replyReady})
	tx.out = append(tx.out, refusedQuery...)
}
