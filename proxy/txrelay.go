package proxy

import (
	"bufio"
	"errors"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
	"github.com/tenantproxy/tenantproxy/pool"
)

// relayEnd is how a relay returned.
type relayEnd uint8

const (
	// relayOn: not returned; the relay goes on.
	relayOn relayEnd = iota
	// relayUnbound: the transaction ended, c went back to the pool.
	relayUnbound
	// relayFailed: the session must end; c was released or closed.
	relayFailed
	// relayPaused (inline only): every reply owed was relayed, c stays
	// bound to the open transaction and nothing is buffered.
	relayPaused
	// relayCopy (inline only): the server wants COPY data, which the
	// client loop must read while the server may still answer.
	relayCopy
)

// relay forwards the replies of the bound connection to the client from
// src, which reads it. Inline (the client loop relaying), it also returns
// when the client is owed nothing more (relayPaused) and after a
// CopyInResponse or CopyBothResponse (relayCopy); in the background it
// relays until the binding ends.
func (tx *txSession) relay(src *bufio.Reader, inline bool) relayEnd {
	tx.mu.Lock()
	c := tx.server
	tx.mu.Unlock()
	// A wake meant for the previous holder may have left a deadline.
	resumeRead(c.NetConn())
	sc := &tx.relayScan
	sc.Reset(src, tx.client)
	sc.Whole(pgwire.ReadyForQuery, pgwire.ParameterStatus, pgwire.CopyInResponse, pgwire.CopyBothResponse, pgwire.ErrorResponse,
		pgwire.NotificationResponse, pgwire.CommandComplete)
	for {
		m, err := sc.Next()
		end := relayOn
		switch {
		case err != nil:
			end = tx.relayStopped(c, err)
		case tx.swallow > 0:
			end = tx.setupReply(c, m)
		default:
			end = tx.clientReply(c, m, inline)
		}
		if end == relayOn && inline && sc.AtBoundary() && sc.Buffered() == 0 && tx.owedNothing() {
			end = relayPaused
			if err := tx.flushReplies(); err != nil {
				end = tx.relayStopped(c, err)
			}
		}
		if end != relayOn {
			return end
		}
	}
}

// flushReplies writes every reply relayed so far, the one just read
// included.
func (tx *txSession) flushReplies() error {
	if err := tx.relayScan.Forward(); err != nil {
		return err
	}
	return tx.relayScan.Flush()
}

// relayStopped handles a failed read of the server (relayOn after an
// interrupt that found the session going on) or write to the client.
func (tx *txSession) relayStopped(c *pool.Conn, err error) relayEnd {
	sc := &tx.relayScan
	boundary := sc.AtBoundary() && sc.Buffered() == 0
	var werr *pgwire.WriteError
	if errors.As(err, &werr) {
		quiet := boundary && tx.owedNothing()
		tx.fail(c, err)
		tx.backends.Release(c, quiet)
		return relayFailed
	}
	if tx.serverStopped(c, err, boundary) {
		return relayOn
	}
	return relayFailed
}

// setupReply consumes a reply to the context set-up the pool put in
// front of the client's first message: never relayed. An error there
// ends the session rather than run the client's statements in a context
// not its own.
func (tx *txSession) setupReply(c *pool.Conn, m pgwire.Message) relayEnd {
	sc := &tx.relayScan
	switch m.Type {
	case pgwire.ErrorResponse:
		err := sc.Discard()
		tx.fail(c, errContextLost)
		tx.backends.ReleaseTx(c, false)
		tx.srv.log.Error("tenant context setup failed in transaction mode", zap.String("tenant", tx.tenant), zap.Uint32("pid", c.PID()))
		if err == nil {
			tx.client.Write(encodeError(errContextLost, fatal))
		}
		return relayFailed
	case pgwire.ReadyForQuery:
		tx.mu.Lock()
		tx.swallow--
		tx.mu.Unlock()
	case pgwire.ParameterStatus:
		tx.parameterStatus(c, m.Body())
	}
	if err := sc.Discard(); err != nil {
		return tx.relayStopped(c, err)
	}
	return relayOn
}

// clientReply relays one reply to the client's own messages, hiding the
// replies to the proxy's (rewriter) and swapping stand-ins' errors for
// refusals.
func (tx *txSession) clientReply(c *pool.Conn, m pgwire.Message, inline bool) relayEnd {
	sc := &tx.relayScan
	var err error
	switch m.Type {
	case pgwire.ParseComplete, pgwire.CloseComplete:
		if r, _ := tx.replies.pop(); r.inject {
			err = sc.Discard()
		}
	case pgwire.ParameterStatus:
		tx.parameterStatus(c, m.Body())
	case pgwire.CommandComplete:
		// It may tell that tracked settings were not committed.
		tx.settingsFailed(m.Type, m.Body())
		var dropped bool
		if dropped, err = deallocReply(sc, &tx.replies, m.Bytes); !dropped {
			err = loadReply(sc, &tx.replies, m.Bytes)
		}
	case pgwire.CopyInResponse, pgwire.CopyBothResponse:
		if inline {
			// Relayed now, so that the client has it before the client
			// loop goes back to reading the client.
			if err = tx.flushReplies(); err == nil {
				return relayCopy
			}
		}
	case pgwire.ErrorResponse:
		// It may tell that tracked settings were not committed.
		tx.settingsFailed(m.Type, m.Body())
		var handled bool
		if handled, err = loadError(sc, &tx.replies, m.Bytes); !handled {
			_, err = swapRefusal(sc, &tx.replies, m.Bytes)
		}
	case pgwire.NotificationResponse:
		if tx.channels != "" {
			err = relayNotification(sc, m.Bytes, tx.channels)
		}
	case pgwire.ReadyForQuery:
		return tx.readyForQuery(c, m)
	}
	if err != nil {
		return tx.relayStopped(c, err)
	}
	return relayOn
}

// readyForQuery relays a ReadyForQuery and gives c back when it leaves
// the client with nothing in flight.
func (tx *txSession) readyForQuery(c *pool.Conn, m pgwire.Message) relayEnd {
	sc := &tx.relayScan
	tx.status = m.Body()[0]
	var err error
	tx.ready(c)
	tx.timePinnedTx()
	if tx.status == 'I' {
		tx.transactions.Inc()
		if tx.replies.owed() == 0 {
			if sc.Buffered() == 0 {
				err = tx.flushReplies()
				if err == nil && tx.giveBack(c) {
					return relayUnbound
				}
			}
		}
	}
	if err != nil {
		return tx.relayStopped(c, err)
	}
	return relayOn
}

// parameterStatus records a ParameterStatus body (name\0value\0) on c.
func (tx *txSession) parameterStatus(c *pool.Conn, body []byte) {
	name, rest, ok := pgwire.CString(body)
	if !ok {
		return
	}
	value, _, ok := pgwire.CString(rest)
	if ok {
		c.SetParameterStatus(name, value)
	}
}

// ready consumes the expected replies up to the ReadyForQuery being
// relayed, and settles the session settings pending there. Parses
// pending there failed and are forgotten on c and, when they were the
// client's own, by the client, under mu: the client loop adds statements
// to both under mu too.
func (tx *txSession) ready(c *pool.Conn) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	tx.observe(tx.replies.readyFor(tx.status, func(name string, settles uint64) {
		c.ForgetStatement(name)
		tx.stmts.forgetFailed(name, settles)
	}))
	tx.settleLocked(c)
}
