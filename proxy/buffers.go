package proxy

import (
	"runtime/debug"
	"sync"
	"time"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/pgwire"
)

// This file bounds the memory the proxy holds for client messages read
// whole. A statement cannot stream through the proxy: the policy must see
// its whole text before any of it reaches the server (a refusal cannot
// be taken back once the server has part of it), so a Query or Parse
// longer than the read buffer is held whole; in transaction mode every
// client message is. Such a message is held only while it is passed on
// (pgwire.Scanner gives its buffer back then), and the memory held for
// the longest ones, across all sessions, is capped by
// Config.MaxBufferedBytes.

// bufferWait is how long a client whose message does not fit under
// Config.MaxBufferedBytes waits for other sessions to pass theirs on
// before it gets 53200: long enough for a few messages of the maximum
// size to go through on a loopback or LAN link, short enough that a
// client never hangs for long on a proxy short of memory.
const bufferWait = 5 * time.Second

// How many times a session holds a long client message while passing
// it on, which is what it is charged against the cap: session mode
// writes it to the server from the buffer it was read into; transaction
// mode copies it into its one write to the server (behind the context
// set-up, with prepared statements renamed) before giving the buffer
// back.
const (
	sessionCopies = 1
	txCopies      = 2
)

// The Go runtime hands freed heap back to the operating system only
// slowly, and an idle proxy allocates too little to even start a
// collection for minutes: after a burst of big messages its RSS would stay
// at the burst's peak. So once returnAfter bytes of long messages have
// been given back, the budget returns free memory to the operating system
// (debug.FreeOSMemory: a collection, then every free page released), at
// most once per returnInterval, which bounds its cost to a collection of
// the proxy's small live heap a second.
const (
	returnAfter    = 32 << 20
	returnInterval = time.Second
)

// bufferBudget is the server-wide cap on memory held for long client
// messages. Waiters are served first come, first served, so a big
// message is not starved by a stream of smaller ones. Safe for
// concurrent use.
type bufferBudget struct {
	mu sync.Mutex
	// wait is bufferWait but in tests.
	wait time.Duration
	// max is the cap in bytes; negative means none.
	max     int64
	used    int64
	waiters []*bufferWaiter
	// freed counts bytes given back since memory was last returned to
	// the operating system; returning is the timer that will, if set.
	freed      int64
	lastReturn time.Time
	returning  *time.Timer
	closed     bool
}

// bufferWaiter is a session waiting for n bytes; ready is closed when
// they are granted.
type bufferWaiter struct {
	n     int64
	ready chan struct{}
}

func newBufferBudget(max int64) *bufferBudget {
	return &bufferBudget{wait: bufferWait, max: max}
}

// acquire takes n bytes of the budget, waiting up to b.wait for them
// behind earlier waiters. It fails when they do not come in time, at
// once when n alone is over the cap. A nil budget has no cap (sessions
// that tests build without a Server from New).
func (b *bufferBudget) acquire(n int64) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	switch {
	case b.max < 0 || len(b.waiters) == 0 && b.used+n <= b.max:
		b.used += n
		b.mu.Unlock()
		return true
	case n > b.max:
		b.mu.Unlock()
		return false
	}
	w := &bufferWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	wait := b.wait
	b.mu.Unlock()

	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.ready:
		return true
	case <-t.C:
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready: // granted while the timer fired
		return true
	default:
	}
	for i, o := range b.waiters {
		if o == w {
			b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
			break
		}
	}
	// Those behind w may fit now.
	b.grant()
	return false
}

// release gives back n bytes taken by acquire.
func (b *bufferBudget) release(n int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	b.freed += n
	b.grant()
	b.scheduleReturn()
}

// setMax changes the cap (negative: none); waiters that fit now get
// their bytes. What is held stays held.
func (b *bufferBudget) setMax(max int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.max = max
	b.grant()
}

// grant serves waiters in order while the first fits. Called with mu
// held.
func (b *bufferBudget) grant() {
	for len(b.waiters) > 0 {
		w := b.waiters[0]
		if b.max >= 0 && b.used+w.n > b.max {
			return
		}
		b.used += w.n
		close(w.ready)
		b.waiters[0] = nil
		b.waiters = b.waiters[1:]
	}
}

// scheduleReturn arranges for free memory to go back to the operating
// system once enough was given back. Called with mu held.
func (b *bufferBudget) scheduleReturn() {
	if b.freed < returnAfter || b.returning != nil || b.closed {
		return
	}
	b.returning = time.AfterFunc(max(0, time.Until(b.lastReturn.Add(returnInterval))), b.returnMemory)
}

// returnMemory runs on returning's own goroutine, which ends with it.
func (b *bufferBudget) returnMemory() {
	b.mu.Lock()
	b.freed = 0
	b.mu.Unlock()
	debug.FreeOSMemory()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastReturn, b.returning = time.Now(), nil
	b.scheduleReturn()
}

// close stops returning memory to the operating system: the Server is
// shut down.
func (b *bufferBudget) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.returning != nil {
		b.returning.Stop()
		b.returning = nil
	}
}

// inUse is how many bytes are held.
func (b *bufferBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// outOfMemory is the error of a message of n bytes that found no room
// under the cap. It tells nothing of what other sessions hold.
func outOfMemory(n int) error {
	return pgerr.Errorf(pgerr.CodeOutOfMemory, "out of memory: no room for a message of %d bytes within tenantproxy's limit on buffered client messages", n)
}

// messageBuffers lends a session's client Scanner the buffers of
// messages it reads whole that are longer than its read buffer
// (pgwire.Buffers). Up to pgwire.MaxRetained they come from a pool all
// sessions share, so an idle client holds none and busy ones allocate
// nothing per message; they are bounded by the number of sessions, like
// the read buffers, and not charged, so that a tenant filling the budget
// with huge messages cannot stop others' ordinary ones. Longer ones are
// allocated for their message, charged copies times against the budget,
// and dropped when given back.
type messageBuffers struct {
	budget *bufferBudget
	copies int64
}

var _ pgwire.Buffers = (*messageBuffers)(nil)

// smallBuffers holds buffers of pgwire.MaxRetained bytes.
var smallBuffers = sync.Pool{New: func() any { return new([pgwire.MaxRetained]byte) }}

func (m *messageBuffers) Get(n int) ([]byte, error) {
	if n <= pgwire.MaxRetained {
		return smallBuffers.Get().(*[pgwire.MaxRetained]byte)[:n], nil
	}
	if !m.budget.acquire(int64(n) * m.copies) {
		return nil, outOfMemory(n)
	}
	return make([]byte, n), nil
}

func (m *messageBuffers) Put(b []byte) {
	if cap(b) <= pgwire.MaxRetained {
		smallBuffers.Put((*[pgwire.MaxRetained]byte)(b[:pgwire.MaxRetained]))
		return
	}
	m.budget.release(int64(cap(b)) * m.copies)
}
