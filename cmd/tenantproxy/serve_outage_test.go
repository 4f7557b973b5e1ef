package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/test"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// forwarder relays TCP connections from addr to target until stopped; a
// stopped forwarder refuses connections, as a control database that went
// away does.
type forwarder struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        []net.Conn
}

func (f *forwarder) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.ln, f.addr = ln, ln.Addr().String()
	f.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", f.target)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, s)
			f.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
}

func (f *forwarder) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ln.Close()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

func httpStatus(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestServeWaitsForTheCatalogAndOutlivesItsOutage: serve started before its
// catalog is migrated stays up, alive and not ready, and serves once
// `migrate up` has run; when the control database becomes unreachable
// later, a tenant already known keeps logging in, a tenant never looked up
// gets 57P03, and /readyz stays 200.
func TestServeWaitsForTheCatalogAndOutlivesItsOutage(t *testing.T) {
	cluster := pgtest.Shared(t)
	dsn := pgtest.NewDatabase(t, cluster)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	fwd := &forwarder{addr: "127.0.0.1:0", target: u.Host}
	fwd.start(t)
	t.Cleanup(fwd.stop)
	// serve reaches the control database through the forwarder; the
	// backend registered by migrate up (the direct DSN) does not.
	viaForwarder := *u
	viaForwarder.Host = fwd.addr
	t.Setenv("TENANTPROXY_CATALOG_DSN", viaForwarder.String())

	listen, adminAddr := test.FreeAddr(t), test.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", listen, "--admin-listen", adminAddr, "--log-level", "error"}, io.Discard, io.Discard)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for httpStatus("http://"+adminAddr+"/healthz") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("serve's /healthz never answered while the catalog was not migrated")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("serve exited before its catalog was migrated: %v", err)
	default:
	}
	if got := httpStatus("http://" + adminAddr + "/readyz"); got != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before the catalog is reached: %d; want 503", got)
	}

	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	migrateChat(t)
	mustCLI(t, "tenant", "create", "acme", "--plan", "free", "--admin-user", "alice", "--admin-password", "correct-horse")
	clientDSN := "postgres://alice.acme:correct-horse@" + listen + "/chat?sslmode=disable"
	deadline = time.Now().Add(30 * time.Second)
	for {
		c, err := pgx.Connect(ctx, clientDSN)
		if err == nil {
			c.Close(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve never served after migrate up: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The tenant's create notified every catalog client; a look-up that
	// raced those notifications was answered but not cached. Once they are
	// in, one more login caches the tenant, its user and its backend.
	time.Sleep(500 * time.Millisecond)
	c, err := pgx.Connect(ctx, clientDSN)
	if err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)

	fwd.stop()
	for i := range 3 {
		c, err := pgx.Connect(ctx, clientDSN)
		if err != nil {
			t.Fatalf("login %d of a known tenant during the catalog outage: %v", i, err)
		}
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
			t.Fatalf("query during the catalog outage: %v", err)
		}
		c.Close(ctx)
	}
	_, err = pgx.Connect(ctx, "postgres://alice.globex:correct-horse@"+listen+"/chat?sslmode=disable")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P03" {
		t.Fatalf("a tenant never looked up, during the outage: %v; want 57P03", err)
	}
	if got := httpStatus("http://" + adminAddr + "/readyz"); got != http.StatusOK {
		t.Fatalf("/readyz during the catalog outage: %d; want 200", got)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
}
