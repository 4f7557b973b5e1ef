package test

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/proxy"
	"github.com/tenantproxy/tenantproxy/router"
)

const baseDomain = "db.test"

func TestTLSAndSNI(t *testing.T) {
	e := newProxyEnv(t)
	certFile, keyFile, roots := pgtest.SelfSignedCert(t, "*."+baseDomain, baseDomain)
	newCert, newKey, newRoots := pgtest.SelfSignedCert(t, "*."+baseDomain, baseDomain)
	srv, addr := e.startProxy(t, proxy.Config{TLSCertFile: certFile, TLSKeyFile: keyFile, Identify: router.IdentifyConfig{BaseDomain: baseDomain}})

	t.Run("sslmode=require with psql", func(t *testing.T) {
		out := run(t, clientTool(t, "psql"), dsn(addr, "alice.acme", tenantPassword, "sslmode=require"), "-X", "-A", "-t",
			"-c", "SELECT 'ok'", "-c", `\conninfo`)
		if !strings.Contains(out, "ok") || !strings.Contains(out, "SSL connection") {
			t.Fatalf("psql over TLS: %s", out)
		}
	})

	// The tenant comes from the server name alone: the user has no
	// marker and there are no options.
	sniConnWith := func(t *testing.T, roots *x509.CertPool, serverName, user string) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(dsn(addr, user, tenantPassword, "sslmode=require"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLSConfig = &tls.Config{ServerName: serverName, RootCAs: roots}
		cfg.Fallbacks = nil
		return pgx.ConnectConfig(ctxT(t), cfg)
	}
	sniConn := func(t *testing.T, serverName, user string) (*pgx.Conn, error) {
		return sniConnWith(t, roots, serverName, user)
	}
	t.Run("SNI names the tenant", func(t *testing.T) {
		for _, tt := range tierTenants {
			conn, err := sniConn(t, tt.sub+"."+baseDomain, "alice")
			if err != nil {
				t.Fatalf("%s: %v", tt.sub, err)
			}
			var n int
			if err := conn.QueryRow(ctxT(t), "SELECT count(*) FROM messages WHERE body NOT LIKE $1", tt.sub+" %").Scan(&n); err != nil || n != 0 {
				t.Fatalf("%s over SNI sees %d foreign rows, %v", tt.sub, n, err)
			}
			conn.Close(ctxT(t))
		}
	})
	t.Run("SNI and user disagree", func(t *testing.T) {
		_, err := sniConn(t, "acme."+baseDomain, "alice.globex")
		assertPgError(t, err, "FATAL", "28000", "conflicting")
	})

	t.Run("Reload rotates the certificate", func(t *testing.T) {
		if err := srv.Reload(proxy.Config{TLSCertFile: newCert, TLSKeyFile: newKey, Identify: router.IdentifyConfig{BaseDomain: baseDomain}}); err != nil {
			t.Fatal(err)
		}
		if _, err := sniConn(t, "acme."+baseDomain, "alice"); err == nil {
			t.Fatal("the old certificate is still served")
		}
		conn, err := sniConnWith(t, newRoots, "acme."+baseDomain, "alice")
		if err != nil {
			t.Fatalf("with the new certificate: %v", err)
		}
		conn.Close(ctxT(t))
	})

	t.Run("RequireTLS refuses plaintext", func(t *testing.T) {
		if err := srv.Reload(proxy.Config{TLSCertFile: newCert, TLSKeyFile: newKey, RequireTLS: true, Identify: router.IdentifyConfig{BaseDomain: baseDomain}}); err != nil {
			t.Fatal(err)
		}
		assertPgError(t, connectErr(t, dsn(addr, "alice.acme", tenantPassword)), "FATAL", "28000", "TLS")
		conn, err := sniConnWith(t, newRoots, "acme."+baseDomain, "alice")
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(ctxT(t))
	})
}
