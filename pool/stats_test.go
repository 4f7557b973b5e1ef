package pool_test

import (
	"testing"

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
