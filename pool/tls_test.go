package pool_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

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
	certFile, keyFile, roots := serverCert(t)
	c := pgtest.StartT(t, pgtest.Options{Conf: map[string]string{
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

// serverCert writes a self-signed certificate for localhost where the
// server's OS user can read it (the harness runs postgres as user postgres
// when the tests run as root) and returns the files and a pool trusting it.
func serverCert(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}

	// Not t.TempDir: its parent is private to this OS user.
	dir, err := os.MkdirTemp("", "tenantproxy-pool-tls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(errors.Join(errors.New("root runs the server as OS user postgres"), err))
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(keyFile, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, roots
}
