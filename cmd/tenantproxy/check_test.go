package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/test"

	"github.com/tenantproxy/tenantproxy/canary"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// TestCheckIsolationAgainstServe runs `check isolation` against a real
// `serve` over tenants of every tier and expects a clean report.
func TestCheckIsolationAgainstServe(t *testing.T) {
	dsn := pgtest.NewDatabase(t, pgtest.Shared(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	mustCLI(t, "migrate", "up")
	for _, tn := range [][2]string{{"acme", "free"}, {"globex", "free"}, {"initech", "standard"}, {"umbrella", "enterprise"}} {
		mustCLI(t, "tenant", "create", tn[0], "--plan", tn[1], "--admin-password", "correct-horse")
	}
	listen := test.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", listen, "--admin-listen", test.FreeAddr(t), "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	defer func() {
		cancel()
		<-done
	}()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		c, err := net.Dial("tcp", listen)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve never listened: %v", err)
		}
	}

	out := mustCLI(t, "check", "isolation", "--proxy", listen, "--sample", "-1", "-o", "json")
	var rep canary.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("check isolation -o json: %v in %q", err, out)
	}
	if len(rep.Tenants) != 4 || len(rep.Violations) != 0 {
		t.Fatalf("check isolation: tenants %v, violations %v; want 4 tenants and none", rep.Tenants, rep.Violations)
	}
	if _, err := cli(t, "check", "isolation", "--proxy", "not-an-address"); err == nil {
		t.Fatal("check isolation accepted a proxy address without a port")
	}
}
