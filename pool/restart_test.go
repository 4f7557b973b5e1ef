package pool_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/pool"
)

// TestServerRestartIsSurvived restarts PostgreSQL under an idle pool: the
// dead connections are dropped on the next Acquire and fresh ones made,
// without restarting the Manager.
func TestServerRestartIsSurvived(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	c := pgtest.StartT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Exec(ctx, "postgres", "CREATE ROLE svc LOGIN PASSWORD '"+svcPassword+"'"); err != nil {
		t.Fatal(err)
	}
	tg := pool.Target{Addr: c.Addr(), Database: "postgres", User: "svc", Password: svcPassword}
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 3})
	held := []*pool.Conn{acquire(t, m, tg), acquire(t, m, tg), acquire(t, m, tg)}
	for _, conn := range held {
		m.Release(conn, true)
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		conn := acquire(t, m, tg)
		if got := value(t, conn, "SELECT 1"); got != "1" {
			t.Fatalf("after restart got %q", got)
		}
		defer m.Release(conn, true)
	}
}

// TestUnixSocketAddr reaches the server through its unix socket, as libpq
// does for a host that is a directory, for both Acquire and Cancel.
func TestUnixSocketAddr(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{})
	tg := f.target()
	tg.Addr = f.cluster.SocketDir + ":" + strconv.Itoa(f.cluster.Port)
	conn := acquire(t, m, tg)
	defer m.Release(conn, true)
	if got := value(t, conn, "SELECT coalesce(inet_client_addr()::text, 'unix')"); got != "unix" {
		t.Fatalf("connected from %s, want the unix socket", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pool.Cancel(ctx, tg, conn.PID(), conn.SecretKey()); err != nil {
		t.Fatalf("cancel over the unix socket: %v", err)
	}
}

// TestManagersShareRegisteredMetrics rebuilds a Manager on the same
// registry, as a config reload does, and keeps counting into its series.
func TestManagersShareRegisteredMetrics(t *testing.T) {
	f := newFixture(t)
	reg := prometheus.NewRegistry()
	for range 2 {
		m, err := pool.NewManager(pool.Config{Registerer: reg}, nil)
		if err != nil {
			t.Fatalf("second Manager on one registry: %v", err)
		}
		conn := acquire(t, m, f.target())
		m.Release(conn, false)
		m.Close()
	}
	labels := map[string]string{"database": f.database, "user": f.svc, "result": "ok"}
	if got := gauge(t, reg, "tenantproxy_server_connects_total", labels); got != 2 {
		t.Fatalf("connects_total = %v across two Managers, want 2", got)
	}
}
