package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/proxy"
	"github.com/tenantproxy/tenantproxy/router"
)

const baseDomain = "db.test"

// selfSigned writes a certificate for *.db.test and returns the file
// paths and a pool that trusts it.
func selfSigned(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "*." + baseDomain},
		DNSNames:     []string{"*." + baseDomain, baseDomain},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}

func TestTLSAndSNI(t *testing.T) {
	e := newProxyEnv(t)
	certFile, keyFile, roots := selfSigned(t)
	newCert, newKey, newRoots := selfSigned(t)
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
