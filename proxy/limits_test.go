package proxy

import (
	"testing"
	"time"
)

func TestTokenBucketBurstThenSpacesThenRefuses(t *testing.T) {
	var b tokenBucket
	now := time.Now()
	take := func(at time.Time, bound time.Duration) (time.Duration, bool) { return b.reserve(at, 1, bound) }
	if _, ok := take(now, time.Second); !ok {
		t.Fatal("no rate: refused")
	}
	b.setRate(4, 4, now)
	for i := range 4 {
		if d, ok := take(now, 0); !ok || d != 0 {
			t.Fatalf("token %d of a burst of 4: wait %s, ok %v", i+1, d, ok)
		}
	}
	// The fifth waits a quarter second: more than a bound of 0.1 s
	// (refused at once, no token taken), within one of 1 s.
	if _, ok := take(now, 100*time.Millisecond); ok {
		t.Fatal("over the rate with a short bound: taken; want refused")
	}
	if d, ok := take(now, time.Second); !ok || d != 250*time.Millisecond {
		t.Fatalf("a token at 4 a second after the burst: wait %s, ok %v; want 250ms", d, ok)
	}
	// Later callers queue behind the reserved token.
	if _, ok := take(now, 400*time.Millisecond); ok {
		t.Fatal("second waiter within 0.4 s taken; want refused (its turn is 0.5 s away)")
	}
	// Refill: a second later the bucket is full again, never fuller.
	later := now.Add(10 * time.Second)
	for i := range 4 {
		if _, ok := take(later, 0); !ok {
			t.Fatalf("token %d after refilling: refused", i+1)
		}
	}
	if _, ok := take(later, 0); ok {
		t.Fatal("a bucket refilled past its burst")
	}
	// Lifting the limit lets everything through.
	b.setRate(0, 0, later)
	if d, ok := take(later, 0); !ok || d != 0 {
		t.Fatalf("no limit: wait %s, ok %v", d, ok)
	}
}

// A tenant's server time: a transaction reserves its estimate and its
// statements pay what they took, each at most the burst, so waiters queue
// behind a costly statement for about a second's budget at most.
func TestServerTimeBudgetChargesWhatStatementsTook(t *testing.T) {
	var b tokenBucket
	now := time.Now()
	b.setRate(0.25, 0.25, now) // 250 ms of server time a second
	if d, ok := b.reserve(now, 0.001, 10*time.Second); !ok || d != 0 {
		t.Fatalf("first transaction: wait %s, ok %v", d, ok)
	}
	// Its statement took an hour: it pays a second's budget, 0.25 s,
	// which empties the bucket; the next transaction, reckoned at 0.2 s,
	// waits 0.8 s for it.
	b.settle(0.001, 3600)
	if d, ok := b.reserve(now, 0.2, 10*time.Second); !ok || d < 790*time.Millisecond || d > 810*time.Millisecond {
		t.Fatalf("after an hour-long statement: wait %s, ok %v; want 0.8s", d, ok)
	}
	// Waiters queue behind it, 0.25 s apart at 62.5 ms each: the 36th
	// waits 9.8 s, the 37th would wait over the bound and is refused,
	// taking nothing.
	for i := range 36 {
		if _, ok := b.reserve(now, 0.0625, 10*time.Second); !ok {
			t.Fatalf("waiter %d of 36 refused", i+1)
		}
	}
	if _, ok := b.reserve(now, 0.0625, 10*time.Second); ok {
		t.Fatal("a waiter whose turn is over 10 s away was taken")
	}
	// A reservation given back, unused, never fills it past its burst.
	b.settle(100, 0)
	if b.tokens != 0.25 {
		t.Fatalf("tokens %g after a large refund; want the burst, 0.25", b.tokens)
	}
}
