package test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/tenantproxy/tenantproxy/proxy"
)

func TestSessionLifecycle(t *testing.T) {
	e := newProxyEnv(t)
	reg := prometheus.NewRegistry()
	_, addr := e.startProxy(t, proxy.Config{Registerer: reg})
	ctx := ctxT(t)

	t.Run("server killed mid-session", func(t *testing.T) {
		conn := connect(t, dsn(addr, "alice.acme", tenantPassword))
		var pid int
		if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		admin := connect(t, e.cluster.DSN("postgres"))
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			t.Fatal(err)
		}
		_, err := conn.Exec(ctx, "SELECT 1")
		if code := sqlstateOf(err); code != "57P01" && code != "08006" {
			t.Fatalf("query on a terminated server connection: %v; want 57P01 or 08006", err)
		}
		// The proxy serves the next client, on a fresh server connection.
		other := connect(t, dsn(addr, "alice.acme", tenantPassword))
		var n int
		if err := other.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("session state does not outlive the client", func(t *testing.T) {
		conn := connect(t, dsn(addr, "alice.umbrella", tenantPassword))
		for _, sql := range []string{"SET application_name = 'leaky'", "PREPARE leaky AS SELECT 1", "LISTEN leaky"} {
			// The policy may refuse LISTEN for the tier; what it allows
			// must not outlive the session.
			if _, err := conn.Exec(ctx, sql); err != nil && sqlstateOf(err) != "42501" {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		var pid int
		if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
		next := connect(t, dsn(addr, "alice.umbrella", tenantPassword))
		var pid2, prepared, listens int
		var app string
		if err := next.QueryRow(ctx, `SELECT pg_backend_pid(), current_setting('application_name'),
			(SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaky'), (SELECT count(*) FROM pg_listening_channels())`).Scan(&pid2, &app, &prepared, &listens); err != nil {
			t.Fatal(err)
		}
		if pid2 != pid {
			t.Logf("server connection not reused (pid %d then %d)", pid, pid2)
		}
		if app == "leaky" || prepared != 0 || listens != 0 {
			t.Fatalf("next session sees application_name %q, %d prepared statements, %d LISTENs", app, prepared, listens)
		}
	})

	t.Run("cancel only with the exact key", func(t *testing.T) {
		conn := connect(t, dsn(addr, "alice.acme", tenantPassword))
		pid, secret := conn.PgConn().PID(), conn.PgConn().SecretKey()
		cancelWith := func(pid uint32, secret []byte) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			req := binary.BigEndian.AppendUint32(nil, uint32(12+len(secret)))
			req = binary.BigEndian.AppendUint32(req, 80877102)
			req = binary.BigEndian.AppendUint32(req, pid)
			c.Write(append(req, secret...))
			io.Copy(io.Discard, c) // the proxy answers nothing and closes
		}
		wrong := append([]byte(nil), secret...)
		wrong[3] ^= 1
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "SELECT pg_sleep(1)")
			done <- err
		}()
		time.Sleep(300 * time.Millisecond)
		cancelWith(pid, wrong)
		cancelWith(pid+1, secret)
		if err := <-done; err != nil {
			t.Fatalf("a cancel with a wrong key reached the server: %v", err)
		}
		go func() {
			_, err := conn.Exec(ctx, "SELECT pg_sleep(30)")
			done <- err
		}()
		time.Sleep(300 * time.Millisecond)
		cancelWith(pid, secret)
		if err := <-done; sqlstateOf(err) != "57014" {
			t.Fatalf("cancel with the right key: %v; want 57014", err)
		}
	})

	t.Run("client leaving mid-transaction", func(t *testing.T) {
		conn := connect(t, dsn(addr, "alice.umbrella", tenantPassword))
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO users (username) VALUES ('abandoned')"); err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
		next := connect(t, dsn(addr, "alice.umbrella", tenantPassword))
		var n int
		if err := next.QueryRow(ctx, "SELECT count(*) FROM users WHERE username = 'abandoned'").Scan(&n); err != nil || n != 0 {
			t.Fatalf("abandoned transaction's row: %d, %v; want rolled back", n, err)
		}
	})

	t.Run("startup parameters reach the server and are reported", func(t *testing.T) {
		conn := connect(t, dsn(addr, "alice.acme", tenantPassword, "application_name=chat-api", "options=-c%20statement_timeout%3D1234"))
		if got := conn.PgConn().ParameterStatus("application_name"); got != "chat-api" {
			t.Fatalf("ParameterStatus application_name = %q", got)
		}
		var app, timeout string
		if err := conn.QueryRow(ctx, "SELECT current_setting('application_name'), current_setting('statement_timeout')").Scan(&app, &timeout); err != nil {
			t.Fatal(err)
		}
		if app != "chat-api" || timeout != "1234ms" {
			t.Fatalf("application_name %q statement_timeout %q", app, timeout)
		}
		err := connectErr(t, dsn(addr, "alice.acme", tenantPassword, "options=-c%20role%3Dpostgres"))
		assertPgError(t, err, "FATAL", "42501", "cannot be set")
	})

	t.Run("metrics", func(t *testing.T) {
		conn := connect(t, dsn(addr, "alice.globex", tenantPassword))
		for range 3 {
			if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
		}
		connectErr(t, dsn(addr, "alice.globex", "wrong-password"))
		for _, name := range []string{"tenantproxy_client_connections", "tenantproxy_queries_total", "tenantproxy_transactions_total", "tenantproxy_auth_failures_total"} {
			if n, err := testutil.GatherAndCount(reg, name); err != nil || n == 0 {
				t.Fatalf("%s: %d series, %v", name, n, err)
			}
		}
		if q := counterValue(t, reg, "tenantproxy_queries_total", "globex"); q < 3 {
			t.Fatalf("queries for globex = %v; want at least 3", q)
		}
		if g := counterValue(t, reg, "tenantproxy_client_connections", "globex"); g != 1 {
			t.Fatalf("client connections of globex = %v; want 1", g)
		}
	})

	// Both pool modes: in transaction mode the open transaction holds a
	// pooled connection that the drain must wait for, then give back.
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		// A proxy of the subtest's own, so that Shutdown drains only its
		// clients.
		ownProxy := func(t *testing.T, drain time.Duration) (*proxy.Server, string) {
			return e.startProxy(t, proxy.Config{PoolMode: mode, DrainTimeout: drain})
		}
		t.Run(mode+"/drain lets a transaction finish", func(t *testing.T) {
			srv, daddr := ownProxy(t, 10*time.Second)
			busy := connect(t, dsn(daddr, "alice.umbrella", tenantPassword))
			idle := connect(t, dsn(daddr, "alice.umbrella", tenantPassword))
			tx, err := busy.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO users (username) VALUES ($1)", "drained-"+mode); err != nil {
				t.Fatal(err)
			}
			// A query in flight when the drain starts finishes too.
			slow := connect(t, dsn(daddr, "alice.umbrella", tenantPassword))
			slowDone := make(chan error, 1)
			go func() {
				_, err := slow.Exec(ctx, "SELECT pg_sleep(0.5)")
				slowDone <- err
			}()
			time.Sleep(100 * time.Millisecond)
			shut := make(chan error, 1)
			go func() { shut <- srv.Shutdown(context.Background()) }()
			time.Sleep(200 * time.Millisecond)
			if err := <-slowDone; err != nil {
				t.Fatalf("query in flight during drain: %v", err)
			}
			expectDrained(t, idle, tx, shut, 5*time.Second)
			check := connect(t, dsn(addr, "alice.umbrella", tenantPassword))
			var n int
			if err := check.QueryRow(ctx, "SELECT count(*) FROM users WHERE username = $1", "drained-"+mode).Scan(&n); err != nil || n != 1 {
				t.Fatalf("committed row: %d, %v", n, err)
			}
		})

		t.Run(mode+"/drain timeout ends open transactions", func(t *testing.T) {
			srv, daddr := ownProxy(t, 300*time.Millisecond)
			busy := connect(t, dsn(daddr, "alice.umbrella", tenantPassword))
			tx, err := busy.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := srv.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("Shutdown took %s with a 300ms drain timeout", d)
			}
			_, err = tx.Exec(ctx, "SELECT 1")
			assertPgError(t, err, "FATAL", "57P01", "shutting down")
		})
	}

	t.Run("ListenAndServe on TCP and a unix socket", func(t *testing.T) {
		dir, err := os.MkdirTemp("", "tp")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		srv, err := proxy.New(proxy.Config{Listen: []string{"127.0.0.1:0"}, UnixSocket: filepath.Join(dir, ".s.PGSQL.6432"), Logger: zaptest.NewLogger(t)}, e.cat, e.pool)
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- srv.ListenAndServe() }()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, err := os.Stat(filepath.Join(dir, ".s.PGSQL.6432")); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("unix socket never appeared")
			}
		}
		out := run(t, clientTool(t, "psql"), "host="+dir+" port=6432 dbname=app user=alice.initech password="+tenantPassword, "-X", "-A", "-t", "-c", "SELECT current_user")
		if strings.TrimSpace(out) != e.objectName(t, "initech") {
			t.Fatalf("over the unix socket: %q", out)
		}
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-served; err != proxy.ErrServerClosed {
			t.Fatalf("ListenAndServe: %v", err)
		}
	})

	t.Run("reload switches auth method for new connections", func(t *testing.T) {
		srv, raddr := e.startProxy(t, proxy.Config{})
		assertPgError(t, connectErr(t, dsn(raddr, "alice.acme", "not-the-password")), "FATAL", "28P01", "")
		if err := srv.Reload(proxy.Config{AuthMethod: proxy.AuthTrust}); err != nil {
			t.Fatal(err)
		}
		connect(t, dsn(raddr, "alice.acme", "not-the-password"))
		assertPgError(t, connectErr(t, dsn(raddr, "nobody.acme", "")), "FATAL", "28P01", "")
		if err := srv.Reload(proxy.Config{AuthMethod: "md5"}); err == nil {
			t.Fatal("Reload accepted md5")
		}
	})
}

// counterValue is the value of the metric's series for tenant (summed
// over other labels).
func counterValue(t *testing.T, reg *prometheus.Registry, name, tenant string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" && l.GetValue() == tenant {
					sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	return sum
}

// expectDrained checks a drain in progress (shut reports Shutdown's end):
// the idle client is told FATAL 57P01, the open transaction goes on to its
// commit, and Shutdown returns within wait of it.
func expectDrained(t *testing.T, idle *pgx.Conn, tx pgx.Tx, shut <-chan error, wait time.Duration) {
	t.Helper()
	ctx := ctxT(t)
	_, err := idle.Exec(ctx, "SELECT 1")
	assertPgError(t, err, "FATAL", "57P01", "shutting down")
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("open transaction cut during drain: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit during drain: %v", err)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatalf("Shutdown still waiting %s after the last transaction ended", wait)
	}
}
