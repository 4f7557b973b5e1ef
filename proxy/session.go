package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
)

// relayBufSize is each direction's read buffer. Messages are forwarded
// straight out of it, so it is also the largest write per batch; bigger
// messages stream through it.
const relayBufSize = 8 << 10

// pinnedSession is a session-mode client: one server connection for the
// whole session. Its two directions run on two goroutines:
// clientToBackend on its own, and backendToClient on the connection's
// handler goroutine, which also owns every write to the client.
type pinnedSession struct {
	sessionBase
	backend *pool.Conn
	bconn   net.Conn
	// idleLimit is the tenant's limit on idle transactions, which
	// PostgreSQL times in session mode (connect.go) and the session's
	// statements are held to (rewrite).
	idleLimit time.Duration

	// replies are the ReadyForQuery messages the server owes, and the
	// stand-ins' errors to swap for refusals.
	replies replyQueue
	// inTx: the server's latest ReadyForQuery said a transaction block is
	// open, so the client's next statement starts no transaction of its
	// own for the tenant's rate (charge).
	inTx atomic.Bool

	// clientGone: clientToBackend has returned; clientErr is what it
	// wants the client told, written before clientGone is set.
	clientGone atomic.Bool
	clientErr  error

	// The client's cancel requests (cancel.go), under cancelMu: one is
	// in flight (cancelling), the backend was given back (released).
	cancelMu   sync.Mutex
	cancelling bool
	released   bool
}

// run relays until the session ends, then returns the server connection
// to the pool (for reuse only when the client left it clean).
func (ss *pinnedSession) run(closed func()) {
	defer closed()
	defer ss.counted()()
	done := make(chan clientResult, 1)
	go func() { done <- ss.clientToBackend() }()
	b := ss.backendToClient()
	if b.own {
		// Unblock clientToBackend: its read from the client, or its write
		// to a server that stopped reading.
		ss.client.Close()
		ss.bconn.SetWriteDeadline(pastDeadline)
	}
	c := <-done
	reusable := !b.own && b.clean && c.clean
	ss.bconn.SetDeadline(time.Time{})
	ss.stopCancels()
	ss.srv.backends.Release(ss.backend, reusable)
	reason := b.err
	if reason == nil {
		reason = c.err
	}
	ss.ended(reason, zap.Bool("server_reused", reusable))
}

// drain asks the session to end at the next moment it is idle.
func (ss *pinnedSession) drain() {
	ss.draining.Store(true)
	interruptRead(ss.bconn)
}

// kill ends the session now with 57P01, giving the client a moment to
// receive it.
func (ss *pinnedSession) kill() {
	ss.killed.Store(true)
	ss.client.SetWriteDeadline(time.Now().Add(killGrace))
	ss.bconn.SetDeadline(pastDeadline)
}

// clientResult is how clientToBackend ended. clean means at a message
// boundary, after Terminate or EOF, with nothing half-written to the
// server.
type clientResult struct {
	clean bool
	err   error
}

// clientToBackend forwards client messages to the server until the client
// leaves or an error, then tells backendToClient.
func (ss *pinnedSession) clientToBackend() clientResult {
	r := ss.forwardClient()
	if classify(r.err).tell {
		ss.clientErr = r.err
	}
	ss.clientGone.Store(true)
	interruptRead(ss.bconn)
	return r
}

// forwardClient relays the client's messages, checking every statement
// against the tenant policy. A refused Query, Parse or FunctionCall is
// replaced by a stand-in that fails on the server (refusal.go), whose
// error the other direction swaps for the refusal; after a refused Parse
// the server skips the rest of the batch up to Sync, as after any error.
func (ss *pinnedSession) forwardClient() clientResult {
	src := bufio.NewReaderSize(ss.client, relayBufSize)
	var sc pgwire.Scanner
	sc.Reset(src, ss.bconn)
	sc.SetMaxBody(ss.maxMsg)
	sc.Whole(pgwire.Query, pgwire.Parse)
	sc.SetBuffers(&messageBuffers{budget: ss.srv.buffers, copies: sessionCopies})
	defer sc.Release()
	// charged: a batch of the extended protocol took its transaction's
	// token; the next starts at Sync.
	charged := false
	for {
		m, err := sc.Next()
		if err != nil {
			return clientResult{clean: err == io.EOF && sc.AtBoundary() && sc.Buffered() == 0, err: err}
		}
		switch m.Type {
		case pgwire.Query, pgwire.Parse:
			sql := pgwire.Statement(m.Bytes)
			if reason := ss.srv.policy.Check(sql, ss.rules, policy.SessionMode); reason != "" {
				err = ss.refuse(&sc, m.Bytes, ss.srv.policy.Explain(sql, reason))
			} else if over := ss.quotaAdmit(&sc, m.Type, m.Bytes, sql, &charged); over != nil {
				err = ss.refuse(&sc, m.Bytes, over)
			} else if out, why := ss.rewrite(m.Bytes, ss.idleLimit); why != nil {
				err = ss.refuse(&sc, m.Bytes, why)
			} else if err = replace(&sc, m.Bytes, out); err == nil && m.Type == pgwire.Query {
				if load, r := ss.loadQuery(sql); load != nil {
					ss.replies.push(r)
					if err = sc.Discard(); err == nil {
						err = sc.Write(load)
					}
				}
				ss.replies.push(reply{kind: replyReady})
				ss.queries.Inc()
				if err == nil {
					err = ss.quotaAfter(&sc)
				}
			}
		case pgwire.Bind:
			if over := ss.quotaAdmit(&sc, m.Type, m.Bytes, nil, &charged); over != nil {
				err = ss.refuse(&sc, m.Bytes, over)
			}
		case pgwire.Sync:
			charged = false
			ss.replies.push(reply{kind: replyReady})
		case pgwire.FunctionCall:
			// A fast-path call names a function by OID with its arguments
			// out of band (set_config(2078) included), which the policy
			// cannot read; refuse them all.
			err = ss.refuse(&sc, m.Bytes, refused(errFastPath))
		case pgwire.Execute:
			ss.queries.Inc()
		case pgwire.Terminate:
			return clientResult{clean: true, err: sc.Flush()}
		}
		if err != nil {
			return clientResult{err: err}
		}
	}
}

// charge takes a token of the tenant's transaction rate when a message of
// type typ starts a transaction: a Query outside a transaction block, or
// the first Parse or Bind of a batch there. It returns the error that
// refuses the message when the tenant is over its rate.
func (ss *pinnedSession) charge(sc *pgwire.Scanner, typ byte, charged *bool) error {
	if !ss.startsTx(typ, *charged) {
		return nil
	}
	*charged = typ != pgwire.Query
	if err := ss.srv.admitTransaction(ss.srv.ctx, ss.base()); err != nil {
		ss.srv.countRefusal(ss.tenant, err)
		return err
	}
	// A failed write here is the server's: the refusal that follows fails
	// to write too, and the session ends with it.
	return ss.replan(sc)
}

// startsTx reports whether a message of type typ starts a transaction: a
// Query outside a transaction block, or the first Parse or Bind of a batch
// there (charged: the batch took its token already).
func (ss *pinnedSession) startsTx(typ byte, charged bool) bool {
	return !ss.inTx.Load() && (typ == pgwire.Query || !charged)
}

// refuse replaces the current message m by its stand-in.
func (ss *pinnedSession) refuse(sc *pgwire.Scanner, m []byte, why error) error {
	if err := sc.Discard(); err != nil {
		return err
	}
	ss.replies.push(reply{kind: replyRefused, refusal: why})
	switch m[0] {
	case pgwire.Parse:
		standIn, _ := standInParse(m)
		return sc.Write(standIn)
	case pgwire.Bind:
		// A named Parse that fails: the server skips the batch to Sync,
		// and no statement of the client's is touched.
		return sc.Write(refusedNamedParse)
	}
	ss.replies.push(reply{kind: replyReady})
	return sc.Write(refusedQuery)
}

// backendResult is how backendToClient ended. clean means the server is
// at a message boundary with nothing unread and owes no reply; it may be
// inside a transaction, which the pool's reset rolls back.
type backendResult struct {
	clean bool
	// own is set when the session ended for the server side's reasons
	// (server gone, drain, kill, client write failure) rather than the
	// client leaving.
	own bool
	err error
}

// backendToClient forwards server messages to the client until the client
// leaves (clientGone), the server connection fails, or the Server drains
// or kills the session.
func (ss *pinnedSession) backendToClient() backendResult {
	src := bufio.NewReaderSize(ss.bconn, relayBufSize)
	var sc pgwire.Scanner
	sc.Reset(src, ss.client)
	sc.Whole(pgwire.ReadyForQuery, pgwire.ErrorResponse, pgwire.NotificationResponse)
	status, last := byte('I'), byte(0)
	for {
		m, err := sc.Next()
		if err != nil {
			if r, done := ss.backendStopped(err, sc.AtBoundary() && sc.Buffered() == 0, status, last); done {
				return r
			}
			continue
		}
		if ss.replies.hiddenReply(m.Type) {
			if r, done := ss.dropHiddenReply(&sc, m); done {
				return r
			}
			continue
		}
		last = m.Type
		if m.Type == pgwire.NotificationResponse && ss.channels != "" {
			if err := relayNotification(&sc, m.Bytes, ss.channels); err != nil {
				return backendResult{own: true, err: err}
			}
			continue
		}
		if m.Type == pgwire.CommandComplete {
			if err := loadReply(&sc, &ss.replies, m.Bytes); err != nil {
				return backendResult{own: true, err: err}
			}
			continue
		}
		if m.Type == pgwire.ErrorResponse {
			handled, err := loadError(&sc, &ss.replies, m.Bytes)
			if !handled {
				_, err = swapRefusal(&sc, &ss.replies, m.Bytes)
			}
			if err != nil {
				return backendResult{own: true, err: err}
			}
			continue
		}
		if m.Type != pgwire.ReadyForQuery {
			continue
		}
		status = m.Body()[0]
		ss.inTx.Store(status != 'I')
		ss.observe(ss.replies.readyFor(status, nil))
		if err == nil && status == 'I' {
			ss.transactions.Inc()
			if ss.draining.Load() && ss.replies.owed() == 0 {
				err = sc.Forward()
				if err == nil && sc.Buffered() == 0 {
					return ss.endWith(&sc, errShuttingDown)
				}
			}
		}
		if err != nil {
			return backendResult{own: true, err: err}
		}
	}
}

// endWith ends the session for its own reason, telling the client.
func (ss *pinnedSession) endWith(sc *pgwire.Scanner, err error) backendResult {
	if werr := sc.Write(encodeError(err, fatal)); werr != nil {
		return backendResult{own: true, err: werr}
	}
	return backendResult{own: true, err: err}
}

// backendStopped handles the server's read failing: an interrupt (the
// client left, drain, kill) or the server gone. done means
// backendToClient returns r; else it reads on. boundary means nothing of
// a message is half-relayed.
func (ss *pinnedSession) backendStopped(err error, boundary bool, status, last byte) (r backendResult, done bool) {
	if !errors.Is(err, os.ErrDeadlineExceeded) || ss.killed.Load() {
		reason := errServerLost
		if ss.killed.Load() {
			reason = ss.killError()
			err = reason
		}
		if boundary && (last != pgwire.ErrorResponse || ss.killed.Load()) {
			ss.client.Write(encodeError(reason, fatal))
		}
		return backendResult{own: true, err: err}, true
	}
	if ss.clientGone.Load() {
		if ss.clientErr != nil && boundary {
			ss.client.Write(encodeError(ss.clientErr, fatal))
		}
		return backendResult{clean: boundary && ss.replies.owed() == 0, err: ss.clientErr}, true
	}
	if ss.draining.Load() && boundary && status == 'I' && ss.replies.owed() == 0 {
		ss.client.Write(encodeError(ss.killError(), fatal))
		return backendResult{own: true, err: ss.killError()}, true
	}
	// Draining but not idle: keep relaying; the next ReadyForQuery that
	// leaves the session idle ends it. Clearing the deadline races with a
	// wake for a final reason, so look at those flags again.
	resumeRead(ss.bconn)
	if ss.clientGone.Load() || ss.killed.Load() {
		interruptRead(ss.bconn)
	}
	return backendResult{}, false
}
