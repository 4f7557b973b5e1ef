package proxy

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/policy"
	"go.uber.org/zap"
)

// clientSession is a client past its startup, relaying until it leaves.
// Serve's handler goroutine calls run; Shutdown calls drain, then kill,
// from other goroutines. Session mode (pinnedSession, session.go) and
// transaction mode (txSession, txsession.go) implement it.
type clientSession interface {
	// run relays until the session ends, gives back everything it holds
	// (server connection, cancel key, the tenant's connection slot), logs
	// the session and calls closed, which closes the client's connection.
	// It may return before that, the session parked (park.go): closed is
	// then called by the goroutine that ends it.
	run(closed func())
	// drain ends the session with 57P01 at the first moment it is idle:
	// no transaction open, nothing owed.
	drain()
	// kill ends the session now with 57P01.
	kill()
}

// tenantSession is a session of a tenant (either pool mode), not of the
// console.
type tenantSession interface {
	clientSession
	base() *sessionBase
}

var (
	_ clientSession = (*pinnedSession)(nil)
	_ clientSession = (*txSession)(nil)
)

// sessionBase is what both pool modes know of a session.
type sessionBase struct {
	srv *Server
	// client is the client's connection, through meter once the session
	// starts (initBase).
	client net.Conn
	meter  meteredConn

	tenant, user string
	// rules are the statement classes the tenant's tier and settings
	// allow; the zero value is the strictest.
	rules policy.Rules
	// channels is the prefix of the tenant's LISTEN/NOTIFY channels on
	// the server, "" when it has the database's to itself (channels.go).
	channels string
	// shared: the tenant is in the shared tier, whose COPY FROM STDIN
	// runs as a load (copyshared.go).
	shared       bool
	started      time.Time
	cancelPID    uint32
	maxMsg       int
	queries      tallied
	transactions tallied
	// queryTime observes the statement latencies readyFor measures (the
	// tenant's entry, times, its transactions').
	queryTime prometheus.Observer
	// times is the tenant's entry of the console's totals.
	times *tenantTimes
	// limits are the tenant's, shared with its other sessions and updated
	// in place (limits.go).
	limits *tenantLimits
	// plan is the plan and features the session's server context has
	// (tenantplan.go); read and written by the goroutine that starts
	// transactions.
	plan *planSetup
	// quota is how the session's transactions run against the tenant's
	// storage quota (quota.go).
	quota quotaSession
	// reserved is the server time, in ns, the transaction under way
	// reserved of its tenant's server_time_per_second (admitTransaction).
	reserved atomic.Int64
	// holding cancels the hold of the transaction under way while its
	// tenant's limits hold it (hold).
	holding atomic.Pointer[context.CancelCauseFunc]

	// Why a blocked read was interrupted: the relay goroutines look at
	// these after interruptRead, so each is set before the interrupt.
	draining, killed atomic.Bool
	// killedBy, set before killed, is what a kill tells the client in
	// place of errShuttingDown (endSessions, terminate.go).
	killedBy atomic.Pointer[pgerr.Error]
	// held: the session waits at its tenant's PAUSE (SHOW CLIENTS).
	held atomic.Bool
}

// killError is what the session tells its client when it is killed or
// drained.
func (b *sessionBase) killError() *pgerr.Error {
	if e := b.killedBy.Load(); e != nil {
		return e
	}
	return errShuttingDown
}

// base gives endSessions and the console the tenant and user of either
// mode's session.
func (b *sessionBase) base() *sessionBase { return b }

// observe records the latencies of a ReadyForQuery relayed.
func (b *sessionBase) observe(l latency) {
	if l.answered {
		b.queryTime.Observe(l.query.Seconds())
		b.times.query.Add(micros(l.query))
		b.spent(l.query)
	}
	if l.txEnded {
		b.times.transacted(l.tx)
		b.limits.transacted(l.tx)
	}
}

// counted counts the session among the tenant's connected clients until
// the returned func is called.
func (b *sessionBase) counted() (uncount func()) {
	b.times.clients.Add(1)
	return func() { b.times.clients.Add(-1) }
}

// ended gives back the session's cancel key and connection slot and logs
// the session; both modes end through it.
func (b *sessionBase) ended(reason error, fields ...zap.Field) {
	b.srv.cancels.remove(b.cancelPID)
	b.srv.giveSlot(b.tenant)
	fields = append(fields, zap.String("tenant", b.tenant), zap.String("user", b.user),
		zap.Stringer("client", b.client.RemoteAddr()), zap.Duration("duration", time.Since(b.started)),
		zap.NamedError("reason", reason))
	b.srv.log.Info("session ended", fields...)
}

// killGrace is how long a killed session may still take to write its
// 57P01 to the client.
const killGrace = time.Second

// pastDeadline is in the past: a deadline set to it fails a blocked read
// or write at once.
var pastDeadline = time.Unix(1, 0)

// interruptRead wakes a goroutine blocked reading c: its read fails with
// os.ErrDeadlineExceeded, and its loop looks at the session's flags, then
// either ends or clears the deadline (resumeRead) and reads on. Setting
// the flag before the interrupt, and looking at it again after clearing
// the deadline, is what keeps a wake from being lost.
func interruptRead(c net.Conn) { c.SetReadDeadline(pastDeadline) }

// resumeRead clears a deadline set by interruptRead.
func resumeRead(c net.Conn) { c.SetReadDeadline(time.Time{}) }

// replyKind is what the proxy must recognise among a server's replies.
type replyKind uint8

const (
	// replyParse: ParseComplete, or nothing when an error came first.
	replyParse replyKind = iota + 1
	// replyClose: CloseComplete.
	replyClose
	// replyReady: ReadyForQuery, owed for every Query, Sync and
	// FunctionCall.
	replyReady
	// replyRefused: the error of a stand-in for a refused statement
	// (refusal.go), or nothing if the server skipped it.
	replyRefused
	// replyLoad: the replies up to the next ReadyForQuery are a shared-tier
	// COPY's load (copyshared.go).
	replyLoad
	// replyHidden: the replies up to the next ReadyForQuery are to the
	// proxy's own statement, which the client never sees (tenantplan.go,
	// quota.go).
	replyHidden
	// replyDeallocate: the replies up to the next ReadyForQuery are
	// deallocStandIn's (txdealloc.go).
	replyDeallocate
)

// reply is one reply a server owes. inject marks replies to the proxy's
// own messages, which the client never sees; name is the server-side
// statement of a Parse, forgotten on the connection if the Parse never
// completes, or a load's table (replyLoad); refusal, on a replyRefused,
// is what the client hears in place of the stand-in's error.
type reply struct {
	kind    replyKind
	inject  bool
	name    string
	refusal error
	// more counts further ReadyForQuery messages owed after this one
	// (replyReady only).
	more uint32
}

// replyQueue holds the replies a server owes, in the order it will send
// them: the side writing to the server pushes, the side reading it pops.
// Both pool modes use it; the two sides may be two goroutines.
type replyQueue struct {
	mu   sync.Mutex
	q    []reply
	head int
	// ready counts replyReady entries pending: the ReadyForQuery messages
	// owed. readies counts every one ever pushed, so readies-ready is how
	// many have been answered (or cleared).
	ready   int
	readies uint64
	// queryAt is when the oldest ReadyForQuery owed began to be waited
	// for: its Query or Sync pushed, or the one before it answered. txAt
	// is when the open transaction's first one was pushed; zero while no
	// transaction is open.
	queryAt, txAt time.Time
	// spans counts replyLoad, replyHidden and replyDeallocate entries
	// pending, read without mu.
	spans atomic.Int32
}

// latency is what one ReadyForQuery relayed measured: answered when it
// was owed (query is its wait), txEnded when it ended a transaction (tx
// is the transaction's).
type latency struct {
	query, tx         time.Duration
	answered, txEnded bool
}

func (q *replyQueue) push(r reply) {
	q.mu.Lock()
	if r.kind == replyLoad || r.kind == replyHidden || r.kind == replyDeallocate {
		q.spans.Add(1)
	}
	if r.kind == replyReady {
		if q.ready == 0 {
			q.queryAt = time.Now()
			if q.txAt.IsZero() {
				q.txAt = q.queryAt
			}
		}
		q.ready++
		q.readies++
		// Consecutive ReadyForQuery messages owed share an entry, so a
		// client pipelining plain queries costs a count, not memory per
		// query.
		if n := len(q.q); n > q.head && q.q[n-1].kind == replyReady {
			q.q[n-1].more++
			q.mu.Unlock()
			return
		}
	}
	q.q = append(q.q, r)
	q.mu.Unlock()
}

// pop returns the next expected reply, if any.
func (q *replyQueue) pop() (reply, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.popLocked()
}

func (q *replyQueue) popLocked() (reply, bool) {
	if q.head == len(q.q) {
		return reply{}, false
	}
	r := q.q[q.head]
	if r.more > 0 {
		q.q[q.head].more--
		q.ready--
		return r, true
	}
	q.q[q.head] = reply{}
	q.head++
	if q.head == len(q.q) {
		q.q, q.head = q.q[:0], 0
	}
	switch r.kind {
	case replyReady:
		q.ready--
	case replyLoad, replyHidden, replyDeallocate:
		q.spans.Add(-1)
	}
	return r, true
}

// readyFor consumes the expected replies up to the next ReadyForQuery,
// which is being relayed with transaction status status: Parses still
// pending there failed (the server skipped them after an error), so
// forget is called with their statements' names and the number of that
// ReadyForQuery among all the queue was owed (what clientStmt.settles
// counts).
func (q *replyQueue) readyFor(status byte, forget func(name string, settles uint64)) latency {
	q.mu.Lock()
	defer q.mu.Unlock()
	settles := q.readies - uint64(q.ready) + 1
	for {
		r, ok := q.popLocked()
		if !ok {
			return latency{}
		}
		if r.kind == replyReady {
			return q.timedLocked(status)
		}
		if r.kind == replyParse && r.name != "" && forget != nil {
			forget(r.name, settles)
		}
	}
}

// timedLocked measures a ReadyForQuery owed that was just answered, and
// starts the clocks of what is still owed.
func (q *replyQueue) timedLocked(status byte) latency {
	now := time.Now()
	l := latency{query: now.Sub(q.queryAt), answered: true}
	q.queryAt = now
	if status == 'I' && !q.txAt.IsZero() {
		l.tx, l.txEnded = now.Sub(q.txAt), true
		q.txAt = time.Time{}
		if q.ready > 0 {
			q.txAt = now
		}
	}
	return l
}

func (q *replyQueue) readyCount() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.readies
}

// answered reports how many ReadyForQuery messages have been consumed or
// cleared.
func (q *replyQueue) answered() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.readies - uint64(q.ready)
}

// owed reports how many ReadyForQuery messages the server still owes.
func (q *replyQueue) owed() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	// The proxy's own Queries (replyHidden) are owed a ReadyForQuery too:
	// a connection they were sent on is not idle before it comes.
	n := q.ready
	for _, r := range q.q[q.head:] {
		if r.kind == replyHidden {
			n++
		}
	}
	return n
}

// clear forgets every expected reply: the connection they were owed on is
// gone or back in the pool.
func (q *replyQueue) clear() {
	q.mu.Lock()
	clear(q.q)
	q.q, q.head, q.ready = q.q[:0], 0, 0
	q.spans.Store(0)
	q.txAt = time.Time{}
	q.mu.Unlock()
}
