package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/test"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// TestServeReloadsConfigOnSIGHUPAndDrainsOnStop serves a migrated catalog
// configured from a YAML file, tightens the per-tenant cap in the file,
// sends SIGHUP and sees the new cap refuse a connection with 53300.
func TestServeReloadsConfigOnSIGHUPAndDrainsOnStop(t *testing.T) {
	dsn := pgtest.NewDatabase(t, pgtest.Shared(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	mustCLI(t, "migrate", "up")
	mustCLI(t, "tenant", "create", "acme", "--plan", "free", "--admin-user", "alice", "--admin-password", "correct-horse")

	listen, adminAddr := test.FreeAddr(t), test.FreeAddr(t)
	config := filepath.Join(t.TempDir(), "tenantproxy.yaml")
	writeConfig := func(cap string) {
		if err := os.WriteFile(config, []byte("listen: "+listen+"\nadmin-listen: "+adminAddr+"\ndrain-timeout: 2s\nmax-conns-per-tenant: "+cap+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig("2")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--config", config, "--log-level", "warn"}, io.Discard, io.Discard)
	}()

	clientDSN := "postgres://alice.acme:correct-horse@" + listen + "/chat?sslmode=disable"
	first := waitForProxy(t, clientDSN, done)
	defer first.Close(ctx)
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %v %v", resp, err)
	}
	resp.Body.Close()

	second, err := pgx.Connect(ctx, clientDSN)
	if err != nil {
		t.Fatalf("second connection under a cap of 2: %v", err)
	}
	second.Close(ctx)

	writeConfig("1")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	var pgErr *pgconn.PgError
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := pgx.Connect(ctx, clientDSN)
		if err == nil {
			c.Close(ctx)
		}
		if errors.As(err, &pgErr) && pgErr.Code == "53300" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGHUP with a cap of 1 a second connection got %v; want 53300", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve stopped with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not drain and stop")
	}
	if err := first.Ping(context.Background()); err == nil {
		t.Fatal("a session survived the proxy's shutdown")
	}
}

// TestServeRunsTheIsolationCanaryOnSchedule serves two tenants with the
// canary every 200 ms and reads its verdicts from /metrics.
func TestServeRunsTheIsolationCanaryOnSchedule(t *testing.T) {
	dsn := pgtest.NewDatabase(t, pgtest.Shared(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	mustCLI(t, "migrate", "up")
	mustCLI(t, "tenant", "create", "acme", "--plan", "free")
	mustCLI(t, "tenant", "create", "globex", "--plan", "standard")

	listen, adminAddr := test.FreeAddr(t), test.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", listen, "--admin-listen", adminAddr, "--drain-timeout", "1s",
			"--isolation-check-interval", "200ms", "--log-level", "warn"}, io.Discard, io.Discard)
	}()

	deadline := time.Now().Add(30 * time.Second)
	var metrics string
	for !strings.Contains(metrics, `tenantproxy_isolation_checks_total{result="ok"}`) {
		if time.Now().After(deadline) {
			t.Fatalf("no successful canary check within 30 s; metrics:\n%s", metrics)
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
		if resp, err := http.Get("http://" + adminAddr + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			metrics = string(b)
		}
	}
	if !strings.Contains(metrics, "tenantproxy_isolation_violations_total 0") {
		t.Fatalf("violations counter missing or non-zero:\n%s", metrics)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve stopped with %v", err)
	}
}
