package pool_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/pool"
)

// TestTLSToBackend runs a private cluster with ssl=on and checks that a
// Target with TLS gets an encrypted, verified connection that is reused
// across Release, and that Cancel reaches it over TLS too.
func TestTLSToBackend(t *testing.T) {
	shared := pgtest.Shared(t) // before the leak baseline: it outlives the test
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	certFile, keyFile, roots := pgtest.SelfSignedCert(t, "localhost")
	c := pgtest.StartT(t, pgcluster.Options{Conf: map[string]string{
		"ssl": "on", "ssl_cert_file": certFile, "ssl_key_file": keyFile,
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Exec(ctx, "postgres", "CREATE ROLE svc LOGIN PASSWORD '"+svcPassword+"'"); err != nil {
		t.Fatal(err)
	}
	tg := pool.Target{
		Addr: c.Addr(), Database: "postgres", User: "svc", Password: svcPassword,
		TLS:   &tls.Config{RootCAs: roots, ServerName: "localhost"},
		Setup: []string{"SET app.tenant_id = 'acme'"},
	}
	m, _ := newManager(t, pool.Config{})

	conn := acquire(t, m, tg)
	if _, ok := conn.NetConn().(*tls.Conn); !ok {
		t.Fatalf("NetConn is %T, want *tls.Conn", conn.NetConn())
	}
	if got := value(t, conn, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); got != "true" {
		t.Fatalf("server reports ssl = %s for the pooled connection", got)
	}
	pid := conn.PID()
	m.Release(conn, true)
	conn = acquire(t, m, tg)
	if conn.PID() != pid {
		t.Fatalf("TLS connection not reused: backend %d, want %d", conn.PID(), pid)
	}

	done := make(chan *pgconn.PgError, 1)
	go func() {
		_, pgErr := query(t, conn, "SELECT pg_sleep(30)")
		done <- pgErr
	}()
	// The request may reach the server before the sleep starts; repeat it
	// until the query ends.
	var pgErr *pgconn.PgError
wait:
	for {
		if err := pool.Cancel(ctx, tg, conn.PID(), conn.SecretKey()); err != nil {
			t.Fatalf("cancel over TLS: %v", err)
		}
		select {
		case pgErr = <-done:
			break wait
		case <-time.After(100 * time.Millisecond):
		}
	}
	if pgErr == nil || pgErr.Code != "57014" {
		t.Fatalf("cancelled query ended with %v, want 57014", pgErr)
	}
	m.Release(conn, true)

	// A server that does not speak TLS is refused, not used in plaintext.
	plain := tg
	plain.Addr = shared.Addr()
	if _, err := m.Acquire(ctx, plain); err == nil {
		t.Fatal("acquire with TLS from a server without ssl succeeded")
	}
	if err := pool.Cancel(ctx, plain, 1, 1); err == nil {
		t.Fatal("cancel with TLS to a server without ssl succeeded")
	}
}
