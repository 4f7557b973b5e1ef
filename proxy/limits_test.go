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
	b.setRate(4, 4, 0, now)
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
	b.setRate(0, 0, 0, later)
	if d, ok := take(later, 0); !ok || d != 0 {
		t.Fatalf("no limit: wait %s, ok %v", d, ok)
	}
}

// A tenant's server time: a transaction takes its estimate (at most the
// burst) and pays for what it really took, so a long transaction slows the
// next ones, each by at most the bound, until its cost is paid; what is
// owed stops at the floor.
func TestServerTimeBudgetChargesWhatATransactionTook(t *testing.T) {
	var b tokenBucket
	now := time.Now()
	b.setRate(0.25, 0.25, -15, now) // 250 ms of server time a second
	if taken, d := b.delay(now, 0.001, time.Second); taken != 0.001 || d != 0 {
		t.Fatalf("first transaction: took %g, wait %s", taken, d)
	}
	// It took 1.001 s, not 1 ms: the tenant owes 0.75 s, three seconds of
	// its budget; the next waits the bound and runs.
	b.settle(0.001 - 1.001)
	if _, d := b.delay(now, 0.001, time.Second); d != time.Second {
		t.Fatalf("owing 3 s of budget: wait %s; want the bound, 1s", d)
	}
	// 2.1 s later it owes 0.227 s: about 0.9 s to wait.
	if _, d := b.delay(now.Add(2100*time.Millisecond), 0.001, time.Second); d < 900*time.Millisecond || d > time.Second {
		t.Fatalf("2.1 s later: wait %s; want about 0.9 s", d)
	}
	// An estimate above the burst takes only the burst.
	if taken, _ := b.delay(now.Add(time.Minute), 5, time.Second); taken != 0.25 {
		t.Fatalf("an estimate of 5 s took %g; want the burst, 0.25", taken)
	}
	// Settling never leaves more than the burst, nor owes more than the
	// floor.
	b.settle(100)
	if b.tokens != 0.25 {
		t.Fatalf("tokens %g after a large refund; want the burst, 0.25", b.tokens)
	}
	b.settle(-3600)
	if b.tokens != -15 {
		t.Fatalf("tokens %g after an hour-long transaction; want the floor, -15", b.tokens)
	}
}
