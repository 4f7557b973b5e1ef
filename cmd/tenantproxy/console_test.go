package main

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/test"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// TestServeConsoleFromEnvironment configures the console user from
// TENANTPROXY_CONSOLE_USER and _PASSWORD, lists the tenants with SHOW
// DATABASES, reloads with RELOAD and stops serve with SHUTDOWN.
func TestServeConsoleFromEnvironment(t *testing.T) {
	dsn := pgtest.NewDatabase(t, pgtest.Shared(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	mustCLI(t, "migrate", "up")
	mustCLI(t, "tenant", "create", "acme", "--plan", "free", "--admin-user", "alice", "--admin-password", "correct-horse")
	t.Setenv("TENANTPROXY_CONSOLE_USER", "ops")
	t.Setenv("TENANTPROXY_CONSOLE_PASSWORD", "console-secret")

	listen := test.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", listen, "--admin-listen", "", "--drain-timeout", "2s", "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	c := connectConsole(t, ctx, listen, done)
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, "SHOW DATABASES").ReadAll()
	if err != nil || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "acme" {
		t.Fatalf("SHOW DATABASES: %v %v; want one row for acme", res, err)
	}
	if _, err := c.Exec(ctx, "RELOAD").ReadAll(); err != nil {
		t.Fatalf("RELOAD: %v", err)
	}
	if _, err := c.Exec(ctx, "SHOW VERSION").ReadAll(); err != nil {
		t.Fatalf("the console after RELOAD: %v", err)
	}
	if _, err := c.Exec(ctx, "SHUTDOWN").ReadAll(); err != nil {
		t.Fatalf("SHUTDOWN: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve stopped with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop after SHUTDOWN")
	}
}
