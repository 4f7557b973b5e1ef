package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

func TestTokenBucketBurstThenSpacesThenRefuses(t *testing.T) {
	var b tokenBucket
	ctx := context.Background()
	now := time.Now()
	if err := b.wait(ctx, now, time.Second, "a"); err != nil {
		t.Fatalf("no rate: %v", err)
	}
	b.setRate(4, now)
	for i := range 4 {
		if err := b.wait(ctx, now, 0, "a"); err != nil {
			t.Fatalf("token %d of a burst of 4: %v", i+1, err)
		}
	}
	// The fifth waits a quarter second: more than a bound of 0.1 s
	// (refused at once, no token taken), within one of 1 s.
	if err := b.wait(ctx, now, 100*time.Millisecond, "a"); pgerr.CodeOf(err) != pgerr.CodeRateLimited {
		t.Fatalf("over the rate with a short bound: %v; want 53400", err)
	}
	start := time.Now()
	if err := b.wait(ctx, now, time.Second, "a"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("waited %s for a token at 4 a second after the burst; want about 250ms", d)
	}
	// Later callers queue behind the reserved token.
	if err := b.wait(ctx, now, 400*time.Millisecond, "a"); pgerr.CodeOf(err) != pgerr.CodeRateLimited {
		t.Fatalf("second waiter within 0.4 s: %v; want 53400 (its turn is 0.5 s away)", err)
	}
	// Refill: a second later the bucket is full again, never fuller.
	later := now.Add(10 * time.Second)
	for i := range 4 {
		if err := b.wait(ctx, later, 0, "a"); err != nil {
			t.Fatalf("token %d after refilling: %v", i+1, err)
		}
	}
	if err := b.wait(ctx, later, 0, "a"); err == nil {
		t.Fatal("a bucket refilled past its burst")
	}
	// Lifting the limit lets everything through.
	b.setRate(0, later)
	if err := b.wait(ctx, later, 0, "a"); err != nil {
		t.Fatal(err)
	}
}
