package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
)

// relayBufSize is each direction's read buffer. Messages are forwarded
// straight out of it, so it is also the largest write per batch; bigger
// messages stream through it.
const relayBufSize = 8 << 10

// syncMessage stands in for a refused simple Query: the server answers it
// with the ReadyForQuery the client expects, and the refusal's error is
// put in front of that ReadyForQuery, so the client sees exactly what
// PostgreSQL would send for a failed statement, in order.
var syncMessage = []byte{'S', 0, 0, 0, 4}

// session is a client connected to a server connection, relaying. Its two
// directions run on two goroutines: clientToBackend on its own, and
// backendToClient on the connection's handler goroutine, which also owns
// every write to the client from here on.
type session struct {
	srv     *Server
	client  net.Conn
	backend *pool.Conn
	bconn   net.Conn

	tenant, user string
	// rules are the statement classes the tenant's tier and settings
	// allow; the zero value is the strictest.
	rules        policy.Rules
	started      time.Time
	cancelPID    uint32
	maxMsg       int
	queries      prometheus.Counter
	transactions prometheus.Counter
	// tx is set in transaction pooling mode (txn.go), where backend and
	// bconn are nil: server connections are bound per transaction.
	tx *txSession

	// sentRFQ counts client messages the server answers with one
	// ReadyForQuery each (Query, Sync, FunctionCall), incremented before
	// the message is written, so the reading side can tell whether the
	// server owes any.
	sentRFQ  atomic.Uint64
	refusals refusalQueue

	// Why backendToClient is woken up (through a past read deadline).
	clientGone atomic.Bool
	draining   atomic.Bool
	killed     atomic.Bool
	// clientErr is what clientToBackend wants the client told; written
	// before clientGone is set, read after it is seen.
	clientErr error
}

type refusal struct {
	seq    uint64
	reason string
}

// refusalQueue holds refused statements waiting for the ReadyForQuery
// that answers the Sync sent in their place. n lets the hot path skip the
// lock: refusals are rare.
type refusalQueue struct {
	n  atomic.Int32
	mu sync.Mutex
	q  []refusal
}

func (r *refusalQueue) push(seq uint64, reason string) {
	r.mu.Lock()
	r.q = append(r.q, refusal{seq, reason})
	r.n.Add(1)
	r.mu.Unlock()
}

func (r *refusalQueue) pop(seq uint64) (string, bool) {
	if r.n.Load() == 0 {
		return "", false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.q) == 0 || r.q[0].seq != seq {
		return "", false
	}
	reason := r.q[0].reason
	r.q = r.q[1:]
	r.n.Add(-1)
	return reason, true
}

// wake interrupts backendToClient's read so it looks at the flags.
func (ss *session) wake() { ss.bconn.SetReadDeadline(time.Unix(1, 0)) }

// drain asks the session to end at the next moment it is idle.
func (ss *session) drain() {
	if ss.tx != nil {
		ss.tx.drain()
		return
	}
	ss.draining.Store(true)
	ss.wake()
}

// kill ends the session now with 57P01, giving the client a moment to
// receive it.
func (ss *session) kill() {
	if ss.tx != nil {
		ss.tx.kill()
		return
	}
	ss.killed.Store(true)
	ss.client.SetWriteDeadline(time.Now().Add(time.Second))
	ss.bconn.SetDeadline(time.Unix(1, 0))
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
func (ss *session) clientToBackend() clientResult {
	r := ss.forwardClient()
	if clientFacing(r.err) {
		ss.clientErr = r.err
	}
	ss.clientGone.Store(true)
	ss.wake()
	return r
}

func (ss *session) forwardClient() clientResult {
	src := bufio.NewReaderSize(ss.client, relayBufSize)
	dst := ss.bconn
	var big []byte
	// skipping is set by a refused Parse: like PostgreSQL after an error in
	// the extended protocol, everything up to the next Sync is dropped. The
	// refusal is reported at that Sync, so a client that sends Flush and
	// waits for ParseComplete without a Sync hears of it only when it
	// syncs; the drivers tested (pgx, libpq, pgbench) always sync.
	skipping, skipReason := false, ""
	rest, want := 0, 5
	for {
		if src.Buffered() < want {
			if _, err := src.Peek(want); err != nil {
				return clientResult{clean: err == io.EOF && src.Buffered() == 0 && rest == 0, err: err}
			}
		}
		if rest > 0 {
			var err error
			if rest, want, err = forwardRest(src, dst, rest); err != nil {
				return clientResult{err: err}
			}
			continue
		}
		buf, _ := src.Peek(src.Buffered())
		n := 0
		want = 5
		// drop, when set, is a message at buf[n:] to discard instead of
		// forwarding; sub is what to write in its place.
		drop, sub := 0, []byte(nil)
	scan:
		for n+5 <= len(buf) {
			typ := buf[n]
			size := 1 + int(binary.BigEndian.Uint32(buf[n+1:]))
			if size < 5 {
				return clientResult{err: pgerr.Errorf(pgerr.CodeProtocolViolation, "invalid message length")}
			}
			if size-5 > ss.maxMsg {
				return clientResult{err: pgerr.Errorf(pgerr.CodeMessageTooLarge, "message of %d bytes exceeds the limit of %d", size-5, ss.maxMsg)}
			}
			if skipping && typ != 'S' && typ != 'X' {
				drop = size
				break
			}
			switch typ {
			case 'Q', 'P':
				if n+size > len(buf) {
					if n == 0 && size > src.Size() {
						// Too big to inspect in place: read it whole.
						if cap(big) < size {
							big = make([]byte, size)
						}
						m := big[:size]
						if _, err := io.ReadFull(src, m); err != nil {
							return clientResult{err: err}
						}
						if reason := ss.srv.policy.Check(statementOf(m), ss.rules, policy.SessionMode); reason != "" {
							if typ == 'Q' {
								ss.refusals.push(ss.sentRFQ.Add(1), reason)
								m = syncMessage
							} else {
								skipping, skipReason, m = true, reason, nil
							}
						} else if typ == 'Q' {
							ss.sentRFQ.Add(1)
							ss.queries.Inc()
						}
						if _, err := dst.Write(m); err != nil {
							return clientResult{err: err}
						}
						buf = nil
						break scan
					}
					if n == 0 {
						want = size
					}
					break scan
				}
				if reason := ss.srv.policy.Check(statementOf(buf[n:n+size]), ss.rules, policy.SessionMode); reason != "" {
					drop = size
					if typ == 'Q' {
						ss.refusals.push(ss.sentRFQ.Add(1), reason)
						sub = syncMessage
					} else {
						skipping, skipReason = true, reason
					}
					break scan
				}
				if typ == 'Q' {
					ss.sentRFQ.Add(1)
					ss.queries.Inc()
				}
			case 'S':
				if skipping {
					skipping = false
					ss.refusals.push(ss.sentRFQ.Add(1), skipReason)
				} else {
					ss.sentRFQ.Add(1)
				}
			case 'F':
				// A fast-path call names a function by OID with its
				// arguments out of band (set_config(2078) included), which
				// the policy cannot read; refuse them all.
				drop, sub = size, syncMessage
				ss.refusals.push(ss.sentRFQ.Add(1), "fast-path function calls are not allowed through the proxy")
				break scan
			case 'E':
				ss.queries.Inc()
			case 'X':
				if _, err := dst.Write(buf[:n]); err != nil {
					return clientResult{err: err}
				}
				return clientResult{clean: true}
			}
			if n+size > len(buf) {
				rest = n + size - len(buf)
				n = len(buf)
				break
			}
			n += size
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return clientResult{err: err}
			}
			src.Discard(n)
		}
		if drop > 0 {
			if _, err := src.Discard(drop); err != nil {
				return clientResult{err: err}
			}
			if sub != nil {
				if _, err := dst.Write(sub); err != nil {
					return clientResult{err: err}
				}
			}
		}
		if rest > 0 {
			want = 1
		}
	}
}

// statementOf returns the SQL text of a whole Query or Parse message: the
// string up to its NUL, as the server will read it.
func statementOf(m []byte) []byte {
	body := m[5:]
	if m[0] == 'P' {
		i := bytes.IndexByte(body, 0)
		if i < 0 {
			return body
		}
		body = body[i+1:]
	}
	if i := bytes.IndexByte(body, 0); i >= 0 {
		body = body[:i]
	}
	return body
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
func (ss *session) backendToClient() backendResult {
	src := bufio.NewReaderSize(ss.bconn, relayBufSize)
	dst := ss.client
	var recv uint64
	status, last := byte('I'), byte(0)
	rest, want := 0, 5
	for {
		if src.Buffered() < want {
			if _, err := src.Peek(want); err != nil {
				boundary := rest == 0 && src.Buffered() == 0
				if errors.Is(err, os.ErrDeadlineExceeded) && !ss.killed.Load() {
					if ss.clientGone.Load() {
						if ss.clientErr != nil && boundary {
							ss.sendClient(errorResponse(ss.clientErr, true))
						}
						return backendResult{clean: boundary && recv == ss.sentRFQ.Load(), err: ss.clientErr}
					}
					if ss.draining.Load() && boundary && status == 'I' && recv == ss.sentRFQ.Load() {
						ss.sendClient(errorResponse(errShuttingDown, true))
						return backendResult{own: true, err: errShuttingDown}
					}
					// Draining but not idle: keep relaying; the next
					// ReadyForQuery that leaves the session idle ends it.
					// Clearing the deadline races with a wake for a final
					// reason, so look at those flags again.
					ss.bconn.SetReadDeadline(time.Time{})
					if ss.clientGone.Load() || ss.killed.Load() {
						ss.wake()
					}
					continue
				}
				if ss.killed.Load() {
					if boundary {
						ss.sendClient(errorResponse(errShuttingDown, true))
					}
					return backendResult{own: true, err: errShuttingDown}
				}
				if boundary && last != 'E' {
					ss.sendClient(errorResponse(errServerLost, true))
				}
				return backendResult{own: true, err: err}
			}
		}
		if rest > 0 {
			var err error
			if rest, want, err = forwardRest(src, dst, rest); err != nil {
				return backendResult{own: true, err: err}
			}
			continue
		}
		buf, _ := src.Peek(src.Buffered())
		n := 0
		want = 5
		var refused string
		endAfter := false
	scan:
		for n+5 <= len(buf) {
			typ := buf[n]
			size := 1 + int(binary.BigEndian.Uint32(buf[n+1:]))
			if size < 5 {
				return backendResult{own: true, err: errors.New("server sent an invalid message length")}
			}
			last = typ
			if typ == 'Z' {
				if n+size > len(buf) {
					if n == 0 {
						want = size
					}
					break
				}
				if reason, ok := ss.refusals.pop(recv + 1); ok {
					refused = reason
					break scan
				}
				recv++
				status = buf[n+5]
				if status == 'I' {
					ss.transactions.Inc()
					if ss.draining.Load() && recv == ss.sentRFQ.Load() {
						n += size
						endAfter = true
						break scan
					}
				}
			}
			if n+size > len(buf) {
				rest = n + size - len(buf)
				n = len(buf)
				break
			}
			n += size
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return backendResult{own: true, err: err}
			}
			src.Discard(n)
		}
		if refused != "" {
			if err := ss.sendClient(errorResponse(pgerr.Errorf(pgerr.CodeStatementRefused, "%s", refused), false)); err != nil {
				return backendResult{own: true, err: err}
			}
		}
		if endAfter && src.Buffered() == 0 {
			ss.sendClient(errorResponse(errShuttingDown, true))
			return backendResult{own: true, err: errShuttingDown}
		}
		if rest > 0 {
			want = 1
		}
	}
}

var (
	errShuttingDown = pgerr.Errorf(pgerr.CodeShuttingDown, "terminating connection: tenantproxy is shutting down")
	errServerLost   = pgerr.Errorf(pgerr.CodeBackendUnavailable, "terminating connection: the server connection was lost")
)

// sendClient writes one message to the client. Only backendToClient's
// goroutine calls it once the session runs.
func (ss *session) sendClient(m interface{ Encode([]byte) ([]byte, error) }) error {
	b, err := m.Encode(nil)
	if err != nil {
		return err
	}
	_, err = ss.client.Write(b)
	return err
}

// clientFacing reports whether err is a decision the client should hear
// about (a *pgerr.Error), as opposed to an I/O failure.
func clientFacing(err error) bool {
	var rErr *pgerr.Error
	return errors.As(err, &rErr)
}

// forwardRest writes to dst what src holds of the rest bytes still to
// come of a message whose start was already forwarded. It returns the
// bytes still to come after that and how many to wait for next: one more
// while the message goes on, a header once it is done.
func forwardRest(src *bufio.Reader, dst io.Writer, rest int) (left, want int, err error) {
	chunk := min(rest, src.Buffered())
	b, _ := src.Peek(chunk)
	if _, err = dst.Write(b); err != nil {
		return rest, 0, err
	}
	src.Discard(chunk)
	if rest -= chunk; rest > 0 {
		return rest, 1, nil
	}
	return 0, 5, nil
}
