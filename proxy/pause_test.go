package proxy

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestTenantGatesHoldOnlyThePausedTenant: a wait for a paused tenant
// blocks (and says so through held) until its RESUME, or until stop
// reports the session ends; other tenants pass; PAUSE of all and RESUME
// of all; DISABLE refuses.
func TestTenantGatesHoldOnlyThePausedTenant(t *testing.T) {
	ctx := context.Background()
	g := newTenantGates()
	if err := g.wait(ctx, "acme", nil, nil); err != nil {
		t.Fatalf("wait with no pause: %v", err)
	}
	g.setPaused("acme", true)
	if err := g.wait(ctx, "globex", nil, nil); err != nil {
		t.Fatalf("globex waited on acme's pause: %v", err)
	}
	var held atomic.Bool
	done := make(chan error, 1)
	go func() { done <- g.wait(ctx, "acme", nil, &held) }()
	for !held.Load() {
		time.Sleep(time.Millisecond)
	}
	if _, _, n := g.state("acme"); n != 1 {
		t.Fatalf("%d waiting for acme; want 1", n)
	}
	g.wake() // still paused: it looks again and goes on waiting
	select {
	case err := <-done:
		t.Fatalf("acme's wait ended while paused: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	g.setPaused("acme", false)
	if err := <-done; err != nil || held.Load() {
		t.Fatalf("after RESUME: %v, held %v", err, held.Load())
	}

	g.setPaused("", true)
	var stopped atomic.Bool
	go func() { done <- g.wait(ctx, "globex", stopped.Load, nil) }()
	stopped.Store(true)
	g.wake()
	if err := <-done; err != errShuttingDown {
		t.Fatalf("a stopped session's wait under PAUSE of all: %v; want errShuttingDown", err)
	}
	g.setPaused("", false)
	if g.closed.Load() {
		t.Fatal("gates still closed after RESUME of all")
	}

	g.setDisabled("acme", true)
	if g.admit("acme") == nil || g.admit("globex") != nil {
		t.Fatal("DISABLE acme: want acme refused, globex admitted")
	}
	g.setDisabled("acme", false)
	if g.admit("acme") != nil || g.closed.Load() {
		t.Fatal("ENABLE acme: want acme admitted and the gates open")
	}
}

// TestMoveHoldOutlivesResume: a move's hold and the console's PAUSE are
// apart, so that RESUME (of the tenant or of all) does not release a
// tenant in the middle of its switch, nor the switch's end an operator's
// pause.
func TestMoveHoldOutlivesResume(t *testing.T) {
	ctx := context.Background()
	g := newTenantGates()
	g.setMoving("acme", true)
	g.setPaused("acme", true)
	g.setPaused("", false) // RESUME of all
	var held atomic.Bool
	done := make(chan error, 1)
	go func() { done <- g.wait(ctx, "acme", nil, &held) }()
	for !held.Load() {
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("RESUME released a moving tenant: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	g.setPaused("acme", true)
	g.setMoving("acme", false)
	select {
	case err := <-done:
		t.Fatalf("the move's release lifted the operator's PAUSE: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	g.setPaused("acme", false)
	if err := <-done; err != nil || g.closed.Load() {
		t.Fatalf("after both ended: %v, gates closed %v", err, g.closed.Load())
	}
}
