package pool_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantproxy/tenantproxy/pool"
)

// TestStatsListsEveryServerConnection: Stats lists a held connection as
// active with its tenant, an idle one as idle, and counts the tenant's
// share; Reconnect closes the idle one now and the held one at release.
func TestStatsListsEveryServerConnection(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{})
	tg := f.target()
	tg.Tenant = "acme"
	idle := acquire(t, m, tg)
	held := acquire(t, m, tg)
	m.Release(idle, true)

	st := m.Stats()
	states := map[uint32]pool.ServerConn{}
	for _, sc := range st.Servers {
		states[sc.PID] = sc
	}
	if got := states[held.PID()]; got.State != "active" || got.Tenant != "acme" || got.Database != f.database || got.User != f.svc {
		t.Errorf("held connection listed as %+v; want active, held by acme", got)
	}
	if got := states[idle.PID()]; got.State != "idle" || got.Tenant != "" {
		t.Errorf("idle connection listed as %+v; want idle, no tenant", got)
	}
	if len(st.Servers) != 2 || len(st.Tenants) != 1 || st.Tenants[0].Held != 1 || st.Pools[0].Open != 2 || st.Pools[0].Idle != 1 {
		t.Errorf("Stats = %+v; want 2 servers, acme holding 1, 2 open of which 1 idle", st)
	}

	m.Reconnect("")
	f.waitServerConns(t, "1")
	m.Release(held, true)
	f.waitServerConns(t, "0")
	if st := m.Stats(); len(st.Servers) != 0 {
		t.Errorf("after Reconnect and release, Stats lists %+v", st.Servers)
	}
}

// TestWaitHistogramTimesEveryAcquire: an acquire that finds a connection
// observes 0, one that waits for a release observes its wait, and one
// that gives up observes its wait too.
func TestWaitHistogramTimesEveryAcquire(t *testing.T) {
	f := newFixture(t)
	m, reg := newManager(t, pool.Config{MaxConnsPerKey: 1})
	tg := f.target()
	held := acquire(t, m, tg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Millisecond)
	defer cancel()
	if _, err := m.Acquire(ctx, tg); !errors.Is(err, pool.ErrWaitTimeout) {
		t.Fatalf("acquire on a full pool: %v; want ErrWaitTimeout", err)
	}
	time.AfterFunc(80*time.Millisecond, func() { m.Release(held, true) })
	m.Release(acquire(t, m, tg), true)
	count, sum := waitHistogram(t, reg)
	if count != 3 || sum < 0.14 || sum > 5 {
		t.Fatalf("pool wait histogram: %d observations summing to %.3fs; want 3 (0, ~0.06s, ~0.08s)", count, sum)
	}
}

// waitHistogram reads tenantproxy_pool_wait_seconds.
func waitHistogram(t *testing.T, reg *prometheus.Registry) (uint64, float64) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() == "tenantproxy_pool_wait_seconds" {
			h := fam.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	t.Fatal("tenantproxy_pool_wait_seconds is not registered")
	return 0, 0
}
