package pool_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/pool"
)

// TestReconfigureShrinksIdleNowAndBusyOnRelease: a pool of 4 with two
// idle and two busy connections shrunk to 1 closes both idle ones at
// once, closes the first busy one at its release and keeps the second,
// which then fills the new size.
func TestReconfigureShrinksIdleNowAndBusyOnRelease(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 4, MaxConnsPerTenant: -1})
	tg := f.target()
	cs := []*pool.Conn{acquire(t, m, tg), acquire(t, m, tg), acquire(t, m, tg), acquire(t, m, tg)}
	m.Release(cs[0], true)
	m.Release(cs[1], true)
	f.waitServerConns(t, "4")

	if err := m.Reconfigure(pool.Config{MaxConnsPerKey: 1, MaxConnsPerTenant: -1}); err != nil {
		t.Fatal(err)
	}
	f.waitServerConns(t, "2")
	m.Release(cs[2], true)
	f.waitServerConns(t, "1")
	m.Release(cs[3], true)
	if st := m.Stats(); st.Pools[0].Open != 1 || st.Pools[0].Idle != 1 {
		t.Fatalf("after shrinking to 1 and releasing everything: %+v; want 1 open, idle", st.Pools[0])
	}
	if got := m.Config().MaxConnsPerKey; got != 1 {
		t.Errorf("Config().MaxConnsPerKey = %d; want 1", got)
	}
}

// TestReconfigureGrowsAndWakesWaiters: an Acquire waiting on a full pool
// of 1 gets a connection as soon as the pool is grown to 2, without any
// release.
func TestReconfigureGrowsAndWakesWaiters(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1, WaitTimeout: -1})
	tg := f.target()
	held := acquire(t, m, tg)
	defer m.Release(held, true)
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := m.Acquire(ctx, tg)
		if err == nil {
			m.Release(c, true)
		}
		got <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for m.Stats().Pools[0].Waiting == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the second Acquire never waited")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := m.Reconfigure(pool.Config{MaxConnsPerKey: 2, WaitTimeout: -1}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("waiting Acquire after growing the pool: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("growing the pool did not serve the waiting Acquire")
	}
}

// TestReconfigureAppliesTimeouts: a shorter WaitTimeout bounds the next
// wait, a shorter IdleTimeout makes the reaper close an idle connection,
// and an invalid configuration is refused and changes nothing.
func TestReconfigureAppliesTimeouts(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1, WaitTimeout: time.Minute, IdleTimeout: time.Hour})
	tg := f.target()
	if err := m.Reconfigure(pool.Config{MaxConnsPerKey: 1, MinIdle: 2}); err == nil {
		t.Fatal("Reconfigure accepted MinIdle over MaxConnsPerKey")
	}
	if got := m.Config().WaitTimeout; got != time.Minute {
		t.Fatalf("a refused Reconfigure changed WaitTimeout to %s", got)
	}
	if err := m.Reconfigure(pool.Config{MaxConnsPerKey: 1, WaitTimeout: 50 * time.Millisecond, IdleTimeout: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	held := acquire(t, m, tg)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.Acquire(ctx, tg); !errors.Is(err, pool.ErrWaitTimeout) || time.Since(start) > 5*time.Second {
		t.Fatalf("Acquire on a full pool after WaitTimeout 50ms: %v after %s; want ErrWaitTimeout at once", err, time.Since(start))
	}
	m.Release(held, true)
	f.waitServerConns(t, "0")
}
