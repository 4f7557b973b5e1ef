package proxy

import (
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/pgwire"
)

// acquireAsync runs acquire on its own goroutine; the channel yields its
// result.
func acquireAsync(b *bufferBudget, n int64) <-chan bool {
	ch := make(chan bool, 1)
	go func() { ch <- b.acquire(n) }()
	return ch
}

// waitQueued waits until the budget has n waiters.
func waitQueued(t *testing.T, b *bufferBudget, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b.mu.Lock()
		got := len(b.waiters)
		b.mu.Unlock()
		if got == n {
			return
		}
	}
	t.Fatalf("the budget never had %d waiters", n)
}

func setWait(b *bufferBudget, d time.Duration) {
	b.mu.Lock()
	b.wait = d
	b.mu.Unlock()
}

func TestBufferBudgetGrantsWhatIsGivenBack(t *testing.T) {
	b := newBufferBudget(100)
	if !b.acquire(60) {
		t.Fatal("60 of 100 refused")
	}
	got := acquireAsync(b, 50)
	waitQueued(t, b, 1)
	b.release(60)
	if !<-got {
		t.Fatal("a waiter was refused though the bytes it waited for were given back")
	}
	if n := b.inUse(); n != 50 {
		t.Fatalf("in use %d; want 50", n)
	}
}

func TestBufferBudgetRefusesAfterTheWait(t *testing.T) {
	b := newBufferBudget(100)
	b.wait = 20 * time.Millisecond
	b.acquire(60)
	start := time.Now()
	if b.acquire(50) {
		t.Fatal("50 more granted over a cap of 100 with 60 held")
	}
	if waited := time.Since(start); waited < b.wait {
		t.Fatalf("refused after %v; want a wait of %v first", waited, b.wait)
	}
	if n := b.inUse(); n != 60 || len(b.waiters) != 0 {
		t.Fatalf("in use %d with %d waiters; want 60 and none", n, len(b.waiters))
	}
}

func TestBufferBudgetRefusesMoreThanTheCapAtOnce(t *testing.T) {
	b := newBufferBudget(100)
	b.wait = time.Hour
	if b.acquire(101) {
		t.Fatal("101 granted under a cap of 100")
	}
}

// Waiters are served in order: a small request does not pass a big one
// queued before it, and a waiter that gives up lets those behind it in.
func TestBufferBudgetServesWaitersInOrder(t *testing.T) {
	b := newBufferBudget(100)
	b.acquire(90)
	big := acquireAsync(b, 50)
	waitQueued(t, b, 1)
	small := acquireAsync(b, 5)
	waitQueued(t, b, 2)
	select {
	case <-small:
		t.Fatal("5 bytes granted ahead of a waiter for 50 queued before")
	case <-time.After(20 * time.Millisecond):
	}
	b.release(90)
	if !<-big || !<-small {
		t.Fatal("waiters refused after the holder gave back")
	}

	b = newBufferBudget(100)
	b.acquire(90)
	setWait(b, 30*time.Millisecond)
	first := acquireAsync(b, 50) // gives up
	waitQueued(t, b, 1)
	setWait(b, time.Hour)
	second := acquireAsync(b, 5)
	waitQueued(t, b, 2)
	if <-first {
		t.Fatal("50 granted over the cap")
	}
	if !<-second {
		t.Fatal("5 bytes that fit refused once the waiter ahead gave up")
	}
}

func TestBufferBudgetReloadAndNoCap(t *testing.T) {
	b := newBufferBudget(100)
	b.acquire(90)
	got := acquireAsync(b, 50)
	waitQueued(t, b, 1)
	b.setMax(200)
	if !<-got {
		t.Fatal("a waiter that fits a raised cap refused")
	}
	b.setMax(-1)
	if !b.acquire(1 << 40) {
		t.Fatal("refused with no cap")
	}
}

// Messages up to pgwire.MaxRetained come from the shared pool without a
// charge and without allocating; longer ones are charged copies times
// and refused with 53200 when they do not fit.
func TestMessageBuffersChargeLongMessages(t *testing.T) {
	b := newBufferBudget(3 << 20)
	b.wait = 10 * time.Millisecond
	m := &messageBuffers{budget: b, copies: txCopies}
	small, err := m.Get(20 << 10)
	if err != nil || len(small) != 20<<10 || b.inUse() != 0 {
		t.Fatalf("Get(20 KiB) = %d bytes, %v, %d in use; want it lent uncharged", len(small), err, b.inUse())
	}
	m.Put(small)
	if n := testing.AllocsPerRun(100, func() {
		buf, _ := m.Get(pgwire.MaxRetained)
		m.Put(buf)
	}); n != 0 {
		t.Fatalf("%v allocations per pooled Get and Put; want 0", n)
	}
	long, err := m.Get(1 << 20)
	if err != nil || len(long) != 1<<20 || b.inUse() != 2<<20 {
		t.Fatalf("Get(1 MiB) = %d bytes, %v, %d in use; want it charged twice", len(long), err, b.inUse())
	}
	_, err = m.Get(1 << 20)
	if pgerr.CodeOf(err) != pgerr.CodeOutOfMemory || errorResponse(err, fatal).Code != "53200" || errorResponse(err, fatal).Severity != "FATAL" {
		t.Fatalf("Get over the cap = %v; want FATAL 53200", err)
	}
	m.Put(long)
	if n := b.inUse(); n != 0 {
		t.Fatalf("in use %d after every buffer came back; want 0", n)
	}
	if !clientsFault(err) {
		t.Fatal("53200 is not told to the client")
	}
}
