package pool_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/pool"
)

// acquireTx binds a connection and runs its setup the way the proxy does:
// the returned messages written, their replies read.
func acquireTx(t testing.TB, m *pool.Manager, tt *pool.TxTarget) *pool.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.AcquireTxReady(ctx, tt)
	if err != nil {
		t.Fatalf("AcquireTxReady: %v", err)
	}
	return c
}

func TestAcquireTxPrefersAConnectionInTheTenantsContext(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 3})
	schema := pool.NewTxTarget(f.target(f.schemaSetup()...))
	plain := pool.NewTxTarget(f.target("SET application_name = 'other'"))

	a := acquireTx(t, m, schema)
	b := acquireTx(t, m, plain)
	pidA := a.PID()
	m.ReleaseTx(a, true)
	m.ReleaseTx(b, true) // on top of the idle stack

	ctx := context.Background()
	c, setup, queries, err := m.AcquireTx(ctx, schema)
	if err != nil {
		t.Fatal(err)
	}
	if c.PID() != pidA || len(setup) != 0 || queries != 0 {
		t.Fatalf("got backend %d with %d setup queries; want %d, already in the context, with none", c.PID(), queries, pidA)
	}
	if got := value(t, c, "SELECT current_user || ' ' || current_setting('search_path')"); got != f.tenantRole+" "+f.tenantRole {
		t.Fatalf("context kept across ReleaseTx: %q", got)
	}
	m.ReleaseTx(c, true)

}

func TestAcquireTxSwitchesContextWithoutLeavingThePreviousOne(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	schema := pool.NewTxTarget(f.target(append(f.schemaSetup(), "SET statement_timeout = '7s'")...))
	plain := pool.NewTxTarget(f.target("SET application_name = 'other'"))
	m.ReleaseTx(acquireTx(t, m, schema), true)

	c, _, queries, err := m.AcquireTx(context.Background(), plain)
	if err != nil {
		t.Fatal(err)
	}
	// Not sent: the connection's context is unknown, so it is closed.
	m.ReleaseTx(c, false)
	if queries != 1 {
		t.Fatalf("switch from another context: %d setup queries; want one, the neutral reset and the setup", queries)
	}
	m.ReleaseTx(acquireTx(t, m, schema), true)
	c = acquireTx(t, m, plain)
	defer m.ReleaseTx(c, true)
	got := value(t, c, "SELECT current_user || ' ' || current_setting('search_path') || ' ' || current_setting('statement_timeout') || ' ' || current_setting('application_name')")
	if want := f.svc + ` "$user", public 0 other`; got != want {
		t.Fatalf("after the switch: %q; want %q", got, want)
	}
}

// A setup that fails (here a role dropped under a connected tenant) must
// leave the connection neutral, not in the previous tenant's context, and
// the client's statement written behind it must not run at all (the
// setup's aborted block fails it with 25P02; before the setup was guarded
// it ran in the neutral context).
func TestAcquireTxFailedSwitchLeavesNoContext(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	schema := pool.NewTxTarget(f.target(f.schemaSetup()...))
	gone := pool.NewTxTarget(f.target("SET ROLE tenantproxy_no_such_role", "SET search_path = nowhere"))
	m.ReleaseTx(acquireTx(t, m, schema), true)

	c, setup, queries, err := m.AcquireTx(context.Background(), gone)
	if err != nil {
		t.Fatal(err)
	}
	defer m.ReleaseTx(c, false)
	if queries != 1 {
		t.Fatalf("%d setup queries; want 1", queries)
	}
	// As the proxy does: the setup and the client's statement in one write.
	nc := c.NetConn()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(nc, nc)
	sql := "SELECT current_user || ' ' || current_setting('search_path')"
	msg, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	if _, err := nc.Write(append(setup, msg...)); err != nil {
		t.Fatal(err)
	}
	rows, pgErr := receive(t, fe, "setup")
	if pgErr == nil || pgErr.Code != "22023" || len(rows) != 0 {
		t.Fatalf("setup with a missing role: %v, rows %v; want 22023 and no rows", pgErr, rows)
	}
	rows, pgErr = receive(t, fe, sql)
	if pgErr == nil || pgErr.Code != "25P02" || len(rows) != 0 {
		t.Fatalf("statement after the failed switch: %v %v; want 25P02, not run", rows, pgErr)
	}
	// Past the aborted block the neutralisation, committed on its own,
	// is what is left.
	msg, _ = (&pgproto3.Query{String: "ROLLBACK"}).Encode(nil)
	msg, _ = (&pgproto3.Query{String: sql}).Encode(msg)
	if _, err := nc.Write(msg); err != nil {
		t.Fatal(err)
	}
	receive(t, fe, "ROLLBACK")
	rows, pgErr = receive(t, fe, sql)
	if want := f.svc + ` "$user", public`; pgErr != nil || len(rows) != 1 || rows[0][0] != want {
		t.Fatalf("after the aborted setup: %v %v; want the neutral %q", rows, pgErr, want)
	}
}

// The switch seeds random() with digits the proxy draws anew each time: a
// seed the previous holder fixed is gone, and two switches after the same
// fixed seed give different sequences (a constant seed in the switch would
// make the next holder's random() as predictable as the holder's own).
func TestAcquireTxSwitchSeedsRandomAfresh(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	schema := pool.NewTxTarget(f.target(f.schemaSetup()...))
	plain := pool.NewTxTarget(f.target("SET application_name = 'other'"))
	c := acquireTx(t, m, schema)
	seeded := value(t, c, "SELECT random()::text FROM (SELECT setseed(0.5)) s")
	m.ReleaseTx(c, true)
	seen := map[string]bool{}
	for range 2 {
		c := acquireTx(t, m, schema)
		value(t, c, "SELECT setseed(0.5)")
		m.ReleaseTx(c, true)
		c = acquireTx(t, m, plain)
		got := value(t, c, "SELECT random()::text")
		m.ReleaseTx(c, true)
		if got == seeded || seen[got] {
			t.Fatalf("random() after a switch is %s, seen before (after setseed(0.5): %s); want a fresh seed per switch", got, seeded)
		}
		seen[got] = true
	}
}

func TestWaitersAreServedRoundRobinAcrossTenants(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	base := f.target()
	targetOf := func(tenant string) *pool.TxTarget {
		tg := base
		tg.Tenant = tenant
		return pool.NewTxTarget(tg)
	}
	holder := acquireTx(t, m, targetOf("a"))

	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	enqueue := func(tenant string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, _, err := m.AcquireTx(context.Background(), targetOf(tenant))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, tenant)
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
			m.ReleaseTx(c, true)
		}()
		time.Sleep(30 * time.Millisecond) // queue in this order
	}
	for range 4 {
		enqueue("a")
	}
	enqueue("b")
	m.ReleaseTx(holder, true)
	wg.Wait()
	if len(order) != 5 || order[1] != "b" {
		t.Fatalf("grant order %v; want tenant b second, not behind all of a's waiters", order)
	}
}

func TestTenantCapMakesOnlyThatTenantWait(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 3, MaxConnsPerTenant: 1, WaitTimeout: 100 * time.Millisecond})
	tg := f.target()
	tg.Tenant = "a"
	a := pool.NewTxTarget(tg)
	tg.Tenant = "b"
	b := pool.NewTxTarget(tg)
	held := acquireTx(t, m, a)
	if _, _, _, err := m.AcquireTx(context.Background(), a); err == nil {
		t.Fatal("tenant a past its cap got a connection")
	}
	m.ReleaseTx(acquireTx(t, m, b), true)
	m.ReleaseTx(held, true)
	m.ReleaseTx(acquireTx(t, m, a), true)
}

func TestMinIdleConnectionsAreKeptAndReopened(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 5, MinIdle: 2, IdleTimeout: 100 * time.Millisecond})
	tg := f.target()
	a, b, c := acquire(t, m, tg), acquire(t, m, tg), acquire(t, m, tg)
	m.Release(a, true)
	m.Release(b, true)
	m.Release(c, true)
	// The idle timeout closes one of three, not below the minimum.
	f.waitServerConns(t, "2")
	// A terminated idle connection is replaced by the reaper.
	f.super(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '"+f.svc+"'")
	time.Sleep(200 * time.Millisecond)
	// The peek at acquire drops the dead ones; the reaper dials again.
	d := acquire(t, m, tg)
	m.Release(d, true)
	f.waitServerConns(t, "2")
}

// TestDefaultTenantShareIsHalfThePool: with MaxConnsPerTenant left zero,
// a tenant holds at most half of a pool and waits (WaitTimeout, here
// short) while another tenant still gets a connection; negative lifts the
// cap.
func TestDefaultTenantShareIsHalfThePool(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 4, WaitTimeout: 100 * time.Millisecond})
	tg := f.target()
	tg.Tenant = "a"
	a := pool.NewTxTarget(tg)
	tg.Tenant = "b"
	b := pool.NewTxTarget(tg)
	c1 := acquire(t, m, a.Target)
	c2 := acquire(t, m, a.Target)
	if _, _, _, err := m.AcquireTx(context.Background(), a); !errors.Is(err, pool.ErrWaitTimeout) {
		t.Fatalf("tenant a past half of the pool: %v; want ErrWaitTimeout", err)
	}
	m.ReleaseTx(acquireTx(t, m, b), true)
	m.Release(c1, true)
	m.Release(c2, true)

	uncapped, _ := newManager(t, pool.Config{MaxConnsPerKey: 2, MaxConnsPerTenant: -1, WaitTimeout: 100 * time.Millisecond})
	d1, d2 := acquire(t, uncapped, a.Target), acquire(t, uncapped, a.Target)
	uncapped.Release(d1, true)
	uncapped.Release(d2, true)
}

// TestTenantCapOfItsOwnAppliesAtTheNextAcquire: a tenant's own limit
// below the pool's share caps it, a change applies to its next acquire,
// and a limit above the share does not lift the share.
func TestTenantCapOfItsOwnAppliesAtTheNextAcquire(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 6, WaitTimeout: 100 * time.Millisecond})
	tg := f.target()
	tg.Tenant = "a"
	tg.TenantCap = new(atomic.Int32)
	tg.TenantCap.Store(1)
	a := pool.NewTxTarget(tg)
	held := acquireTx(t, m, a)
	if _, _, _, err := m.AcquireTx(context.Background(), a); !errors.Is(err, pool.ErrWaitTimeout) {
		t.Fatalf("tenant a past its own cap of 1: %v; want ErrWaitTimeout", err)
	}
	tg.TenantCap.Store(2)
	second := acquireTx(t, m, a)
	tg.TenantCap.Store(10) // above the pool's share of 3
	third := acquireTx(t, m, a)
	if _, _, _, err := m.AcquireTx(context.Background(), a); !errors.Is(err, pool.ErrWaitTimeout) {
		t.Fatalf("tenant a past half of the pool with a cap of its own of 10: %v; want ErrWaitTimeout", err)
	}
	for _, c := range []*pool.Conn{held, second, third} {
		m.ReleaseTx(c, true)
	}
}
