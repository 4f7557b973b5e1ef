package pool_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/pool"
)

func TestReleasedConnectionIsReused(t *testing.T) {
	f := newFixture(t)
	m, reg := newManager(t, pool.Config{})
	tg := f.target()

	c := acquire(t, m, tg)
	pid := c.PID()
	if got := value(t, c, "SELECT pg_backend_pid()::text"); got != fmt.Sprint(pid) {
		t.Fatalf("PID() = %d, server says %s", pid, got)
	}
	if got := c.ParameterStatuses()["server_version"]; got == "" {
		t.Fatalf("ParameterStatuses has no server_version: %v", c.ParameterStatuses())
	}
	if c.SecretKey() == 0 {
		t.Fatal("SecretKey() = 0, want the server's cancel key")
	}
	labels := map[string]string{"database": f.database, "user": f.svc}
	if got := gauge(t, reg, "tenantproxy_server_connections", with(labels, "state", "active")); got != 1 {
		t.Fatalf("active gauge = %v while held, want 1", got)
	}
	m.Release(c, true)
	if got := gauge(t, reg, "tenantproxy_server_connections", with(labels, "state", "idle")); got != 1 {
		t.Fatalf("idle gauge = %v after release, want 1", got)
	}

	c = acquire(t, m, tg)
	if c.PID() != pid {
		t.Fatalf("second acquire got backend %d, want the released %d back", c.PID(), pid)
	}
	m.Release(c, true)
	if got := gauge(t, reg, "tenantproxy_server_connects_total", with(labels, "result", "ok")); got != 1 {
		t.Fatalf("connects_total = %v, want 1 for two acquires of one key", got)
	}
	f.waitServerConns(t, "1")
}

func with(labels map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for lk, lv := range labels {
		out[lk] = lv
	}
	return out
}

func TestReleaseNotReusableClosesConnection(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{})
	c := acquire(t, m, f.target())
	pid := c.PID()
	m.Release(c, false)
	f.waitServerConns(t, "0")
	c = acquire(t, m, f.target())
	defer m.Release(c, true)
	if c.PID() == pid {
		t.Fatalf("acquire after a non-reusable release got the closed backend %d again", pid)
	}
}

func TestSetupAppliedAndResetBeforeNextTenant(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})

	// Shared tier: the tenant GUC.
	c := acquire(t, m, f.target("SET app.tenant_id = 'acme'"))
	pid := c.PID()
	if got := value(t, c, "SHOW app.tenant_id"); got != "acme" {
		t.Fatalf("shared-tier setup: app.tenant_id = %q, want acme", got)
	}
	m.Release(c, true)

	// Schema tier on the same server connection: role and search_path, and
	// nothing of the previous tenant.
	c = acquire(t, m, f.target(f.schemaSetup()...))
	if c.PID() != pid {
		t.Fatalf("MaxConnsPerKey=1 yet got backend %d, want %d", c.PID(), pid)
	}
	if got := value(t, c, "SELECT coalesce(current_setting('app.tenant_id', true), '')"); got != "" {
		t.Fatalf("previous tenant's app.tenant_id survived release: %q", got)
	}
	if got := value(t, c, "SELECT current_user"); got != f.tenantRole {
		t.Fatalf("schema-tier setup: current_user = %q, want %q", got, f.tenantRole)
	}
	if got := value(t, c, "SHOW search_path"); got != f.tenantRole {
		t.Fatalf("schema-tier setup: search_path = %q, want %q", got, f.tenantRole)
	}
	m.Release(c, true)

	// Database tier: no setup, so the login role's defaults must be back.
	c = acquire(t, m, f.target())
	defer m.Release(c, true)
	if got := value(t, c, "SELECT current_user"); got != f.svc {
		t.Fatalf("after reset current_user = %q, want the serving role %q", got, f.svc)
	}
	if got := value(t, c, "SHOW search_path"); got != `"$user", public` {
		t.Fatalf("after reset search_path = %q, want the default", got)
	}
}

func TestSetupChangesAreReflectedInParameterStatuses(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	c := acquire(t, m, f.target("SET application_name = 'tenant-acme'"))
	if got := c.ParameterStatuses()["application_name"]; got != "tenant-acme" {
		t.Fatalf("application_name status = %q after setup, want tenant-acme", got)
	}
	m.Release(c, true)
	c = acquire(t, m, f.target())
	defer m.Release(c, true)
	if got := c.ParameterStatuses()["application_name"]; got != "tenantproxy" {
		t.Fatalf("application_name status = %q after reset, want tenantproxy", got)
	}
}

// TestReleaseRemovesSessionState leaves each kind of session state a
// client can create on the connection and checks that the next holder of
// the same backend sees none of it.
func TestReleaseRemovesSessionState(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	cases := []struct {
		name  string
		leave []string // run in order; errors are part of some scenarios
		check string   // must return "0" (or the default) for the next holder
		want  string
	}{
		{"temp table", []string{"CREATE TEMP TABLE leftover (x int)", "INSERT INTO leftover VALUES (1)"},
			"SELECT count(*) FROM pg_class WHERE relname = 'leftover'", "0"},
		{"prepared statement", []string{"PREPARE leftover AS SELECT 1"},
			"SELECT count(*) FROM pg_prepared_statements", "0"},
		{"listen", []string{"LISTEN leftover"},
			"SELECT count(*) FROM pg_listening_channels()", "0"},
		{"advisory lock", []string{"SELECT pg_advisory_lock(42)", "SELECT pg_advisory_lock_shared(43)"},
			"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", "0"},
		{"set", []string{"SET app.tenant_id = 'evil'", "SET statement_timeout = '1234'"},
			"SELECT coalesce(current_setting('app.tenant_id', true), '') || current_setting('statement_timeout')", "0"},
		{"set_config", []string{"SELECT set_config('app.tenant_id', 'evil', false)"},
			"SELECT coalesce(current_setting('app.tenant_id', true), '')", ""},
		{"set role", []string{"SET ROLE " + f.tenantRole},
			"SELECT current_user", f.svc},
		{"set session characteristics", []string{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"},
			"SHOW default_transaction_read_only", "off"},
		{"held cursor", []string{"DECLARE leftover CURSOR WITH HOLD FOR SELECT 1"},
			"SELECT count(*) FROM pg_cursors", "0"},
		{"open transaction", []string{"BEGIN", "SET LOCAL app.tenant_id = 'evil'", "CREATE TEMP TABLE leftover (x int)"},
			"SELECT count(*) FROM pg_class WHERE relname = 'leftover'", "0"},
		{"failed transaction", []string{"BEGIN", "SET ROLE " + f.tenantRole, "SELECT 1/0"},
			"SELECT current_user", f.svc},
	}
	var pid uint32
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := acquire(t, m, f.target())
			if pid == 0 {
				pid = c.PID()
			} else if c.PID() != pid {
				t.Fatalf("got backend %d, want the pool's only backend %d", c.PID(), pid)
			}
			for _, sql := range tc.leave {
				// Only the division by zero is meant to fail; every other
				// statement must really leave its state behind.
				if _, pgErr := query(t, c, sql); pgErr != nil && sql != "SELECT 1/0" {
					t.Fatalf("%s: %v", sql, pgErr)
				}
			}
			m.Release(c, true)

			c = acquire(t, m, f.target())
			defer m.Release(c, true)
			if c.PID() != pid {
				t.Fatalf("reset closed the connection (backend %d, want %d): the state should be cleaned, not the connection dropped", c.PID(), pid)
			}
			if got := value(t, c, tc.check); got != tc.want {
				t.Fatalf("next holder: %s = %q, want %q", tc.check, got, tc.want)
			}
			if got := value(t, c, "SELECT pg_current_xact_id_if_assigned() IS NULL AND now() = statement_timestamp()"); got != "t" {
				t.Fatal("next holder starts inside a transaction")
			}
		})
	}
}

func TestSetupErrorFailsAcquireWithoutLeak(t *testing.T) {
	f := newFixture(t)
	m, reg := newManager(t, pool.Config{MaxConnsPerKey: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err := m.Acquire(ctx, f.target("SET app.tenant_id = 'acme'", "SET ROLE no_such_role"))
	var setupErr *pool.SetupError
	if !errors.As(err, &setupErr) {
		t.Fatalf("acquire with a failing setup: %v, want a *pool.SetupError", err)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22023" {
		t.Fatalf("setup error %v should carry the server's SQLSTATE 22023", err)
	}
	f.waitServerConns(t, "0")
	labels := map[string]string{"database": f.database, "user": f.svc}
	for _, state := range []string{"idle", "active"} {
		if got := gauge(t, reg, "tenantproxy_server_connections", with(labels, "state", state)); got != 0 {
			t.Fatalf("%s gauge = %v after a failed setup, want 0", state, got)
		}
	}

	// The slot came back: with MaxConnsPerKey=1 a good setup still works,
	// also on an idle connection whose setup fails.
	c := acquire(t, m, f.target("SET app.tenant_id = 'acme'"))
	m.Release(c, true)
	if _, err := m.Acquire(ctx, f.target("SET ROLE no_such_role")); !errors.As(err, &setupErr) {
		t.Fatalf("failing setup on an idle connection: %v, want *pool.SetupError", err)
	}
	c = acquire(t, m, f.target())
	m.Release(c, true)
	f.waitServerConns(t, "1")
}

func TestConnectErrorIsReturned(t *testing.T) {
	f := newFixture(t)
	m, reg := newManager(t, pool.Config{MaxConnsPerKey: 1})
	tg := f.target()
	tg.Password = "wrong"
	_, err := m.Acquire(context.Background(), tg)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("acquire with a wrong password: %v, want the server's 28P01", err)
	}
	labels := map[string]string{"database": f.database, "user": f.svc, "result": "error"}
	if got := gauge(t, reg, "tenantproxy_server_connects_total", labels); got != 1 {
		t.Fatalf("failed connects = %v, want 1", got)
	}
	// The failed dial gave its slot back.
	c := acquire(t, m, f.target())
	m.Release(c, true)
}

func TestTerminatedIdleConnectionIsReplaced(t *testing.T) {
	for _, setup := range [][]string{nil, {"SET app.tenant_id = 'acme'"}} {
		t.Run(fmt.Sprintf("setup=%d", len(setup)), func(t *testing.T) {
			f := newFixture(t)
			m, _ := newManager(t, pool.Config{MaxConnsPerKey: 2})
			a := acquire(t, m, f.target(setup...))
			b := acquire(t, m, f.target(setup...))
			dead := map[uint32]bool{a.PID(): true, b.PID(): true}
			m.Release(a, true)
			m.Release(b, true)
			f.superQuery(t, "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity WHERE usename = $1", f.svc)
			f.waitServerConns(t, "0")

			c := acquire(t, m, f.target(setup...))
			defer m.Release(c, true)
			if dead[c.PID()] {
				t.Fatalf("acquire handed out terminated backend %d", c.PID())
			}
			if got := value(t, c, "SELECT 1"); got != "1" {
				t.Fatalf("replacement connection answered %q", got)
			}
		})
	}
}

func TestCancelStopsQueryOnItsBackendOnly(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{})
	tg := f.target()
	busy := acquire(t, m, tg)
	other := acquire(t, m, tg)
	defer m.Release(other, true)

	type result struct{ pgErr error }
	done := make(chan result, 1)
	go func() {
		_, pgErr := query(t, busy, "SELECT pg_sleep(30)")
		done <- result{pgErr}
	}()
	// Cancel only once the server runs the sleep, or the request could land
	// before it and cancel nothing.
	deadline := time.Now().Add(10 * time.Second)
	for f.superQuery(t, "SELECT count(*)::text FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%' AND state = 'active'", busy.PID()) != "1" {
		if time.Now().After(deadline) {
			t.Fatal("pg_sleep never started")
		}
		time.Sleep(10 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pool.Cancel(ctx, tg, busy.PID(), busy.SecretKey()+1); err != nil {
		t.Fatalf("cancel with a wrong key: %v", err)
	}
	select {
	case r := <-done:
		t.Fatalf("a cancel request with the wrong key stopped the query: %v", r.pgErr)
	case <-time.After(300 * time.Millisecond):
	}

	start := time.Now()
	if err := pool.Cancel(ctx, tg, busy.PID(), busy.SecretKey()); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("query still running 10 s after Cancel")
	}
	var pgErr *pgconn.PgError
	if !errors.As(r.pgErr, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("cancelled query ended with %v, want 57014 query_canceled", r.pgErr)
	}
	t.Logf("query cancelled %s after Cancel", time.Since(start))
	if got := value(t, other, "SELECT 'untouched'"); got != "untouched" {
		t.Fatalf("the other backend was disturbed: %q", got)
	}
	m.Release(busy, true)
}

func TestMaxConnsPerKeyMakesAcquireWait(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 2})
	tg := f.target()
	a := acquire(t, m, tg)
	b := acquire(t, m, tg)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := m.Acquire(ctx, tg)
	if !errors.Is(err, pool.ErrWaitTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third acquire on a full pool: %v, want ErrWaitTimeout wrapping the deadline", err)
	}
	if got := f.serverConns(t); got != "2" {
		t.Fatalf("server has %s connections, want MaxConnsPerKey=2", got)
	}

	// Another key is not held up by this one.
	other := tg
	other.Database = "postgres"
	c := acquire(t, m, other)
	m.Release(c, false)

	// A waiter gets the released connection itself.
	got := make(chan *pool.Conn, 1)
	errs := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := m.Acquire(ctx, tg)
		if err != nil {
			errs <- err
			return
		}
		got <- c
	}()
	time.Sleep(50 * time.Millisecond) // let it queue; the handoff is tested either way
	pid := a.PID()
	m.Release(a, true)
	select {
	case c := <-got:
		if c.PID() != pid {
			t.Errorf("waiter got backend %d, want the released %d", c.PID(), pid)
		}
		m.Release(c, true)
	case err := <-errs:
		t.Fatalf("waiting acquire: %v", err)
	}

	// A slot freed by closing a connection lets a waiter dial.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Both slots are taken by b and the idle one: take the idle one first.
		c1, err := m.Acquire(ctx, tg)
		if err != nil {
			errs <- err
			return
		}
		c2, err := m.Acquire(ctx, tg)
		m.Release(c1, true)
		if err != nil {
			errs <- err
			return
		}
		got <- c2
	}()
	time.Sleep(50 * time.Millisecond)
	m.Release(b, false)
	select {
	case c := <-got:
		m.Release(c, true)
	case err := <-errs:
		t.Fatalf("acquire waiting for a freed slot: %v", err)
	}
}

func TestConcurrentAcquireNeverExceedsMax(t *testing.T) {
	f := newFixture(t)
	const max = 3
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: max})
	var held, peak atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				c, err := m.Acquire(ctx, f.target(fmt.Sprintf("SET app.tenant_id = 't%d'", w)))
				cancel()
				if err != nil {
					errs <- err
					return
				}
				n := held.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				held.Add(-1)
				// Every fifth release drops the connection, to exercise
				// slots handed to waiters for dialling.
				m.Release(c, i%5 != 0)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if p := peak.Load(); p > max {
		t.Fatalf("%d connections held at once, MaxConnsPerKey is %d", p, max)
	}
	if got, _ := strconv.Atoi(f.serverConns(t)); got > max {
		t.Fatalf("server has %d connections, want at most %d", got, max)
	}
}

func TestIdleConnectionsAreReaped(t *testing.T) {
	f := newFixture(t)
	m, reg := newManager(t, pool.Config{IdleTimeout: 100 * time.Millisecond})
	a := acquire(t, m, f.target())
	b := acquire(t, m, f.target())
	m.Release(a, true)
	m.Release(b, true)
	f.waitServerConns(t, "0")
	labels := map[string]string{"database": f.database, "user": f.svc, "state": "idle"}
	if got := gauge(t, reg, "tenantproxy_server_connections", labels); got != 0 {
		t.Fatalf("idle gauge = %v after reaping, want 0", got)
	}
	c := acquire(t, m, f.target())
	m.Release(c, true)
}

func TestMaxLifetimeClosesOnRelease(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxLifetime: 50 * time.Millisecond, IdleTimeout: -1})
	c := acquire(t, m, f.target())
	pid := c.PID()
	time.Sleep(60 * time.Millisecond)
	m.Release(c, true)
	c = acquire(t, m, f.target())
	defer m.Release(c, true)
	if c.PID() == pid {
		t.Fatalf("connection past MaxLifetime was reused (backend %d)", pid)
	}
}

func TestCloseEndsPoolAndWaiters(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	idle := acquire(t, m, f.target())
	m.Release(idle, true)
	held := acquire(t, m, f.target())

	waitErr := make(chan error, 1)
	go func() {
		_, err := m.Acquire(context.Background(), f.target())
		waitErr <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-waitErr; !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("acquire waiting at Close: %v, want ErrClosed", err)
	}
	if _, err := m.Acquire(context.Background(), f.target()); !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("acquire after Close: %v, want ErrClosed", err)
	}
	m.Release(held, true)
	f.waitServerConns(t, "0")
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestConfigRejectsMeaninglessValues(t *testing.T) {
	for _, cfg := range []pool.Config{
		{MaxConnsPerKey: -1},
		{ConnectTimeout: -time.Second},
		{ResetTimeout: -time.Second},
		{MaxMessageBodyLen: -1},
	} {
		if m, err := pool.NewManager(cfg, nil); err == nil {
			m.Close()
			t.Errorf("NewManager(%+v) succeeded, want a config error", cfg)
		}
	}
}

func TestSetupInterruptedByContextClosesConnection(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := m.Acquire(ctx, f.target("SELECT pg_sleep(10)"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("acquire with a setup outlasting ctx: %v, want the deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("acquire returned %s after its deadline", d)
	}
	// The slot is free and the interrupted backend is not handed out.
	c := acquire(t, m, f.target())
	defer m.Release(c, true)
	if got := value(t, c, "SELECT 'fresh'"); got != "fresh" {
		t.Fatalf("got %q", got)
	}
}

// TestReleaseInUnknownProtocolStateClosesConnection releases a connection
// whose client left in the middle of an extended-protocol exchange that
// failed: the server ignores everything until a Sync, so the reset cannot
// complete and the connection must be closed, not reused or hung on.
func TestReleaseInUnknownProtocolStateClosesConnection(t *testing.T) {
	f := newFixture(t)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1, ResetTimeout: 300 * time.Millisecond})
	c := acquire(t, m, f.target())
	pid := c.PID()
	fe := pgproto3.NewFrontend(c.NetConn(), c.NetConn())
	fe.Send(&pgproto3.Parse{Query: "SELEC 1"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	m.Release(c, true)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("release took %s, want about ResetTimeout", d)
	}
	c = acquire(t, m, f.target())
	defer m.Release(c, true)
	if c.PID() == pid {
		t.Fatalf("connection in an unknown protocol state was reused (backend %d)", pid)
	}
	f.waitServerConns(t, "1")
}
