package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// TestLimitsThroughTheCLI sets a plan's limit and a tenant's own with the
// CLI and reads the effective limits, with where each comes from, back.
func TestLimitsThroughTheCLI(t *testing.T) {
	t.Setenv("TENANTPROXY_CATALOG_DSN", pgtest.NewDatabase(t, pgtest.StartT(t)))
	mustCLI(t, "migrate", "up")
	mustCLI(t, "tenant", "create", "acme", "--plan", "free", "--admin-password", flagsPassword)

	out := mustCLI(t, "plan", "set", "free", "--limit", "transactions_per_second=50")
	if !strings.Contains(out, "transactions_per_second=50 (plan)") || !strings.Contains(out, "server_connections=4 (default)") {
		t.Fatalf("plan set output: %s", out)
	}
	mustCLI(t, "tenant", "update", "acme", "--limit", "client_connections=3", "--limit", "statement_timeout=5min")

	var shown struct {
		Limits map[string]struct{ Value, Source string }
	}
	if err := json.Unmarshal([]byte(mustCLI(t, "tenant", "show", "acme", "-o", "json")), &shown); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct{ Value, Source string }{
		"client_connections":          {"3", "tenant"},
		"statement_timeout":           {"5min", "tenant"},
		"transactions_per_second":     {"50", "plan"},
		"server_connections":          {"4", "default"},
		"idle_in_transaction_timeout": {"0", "default"},
		"storage_mb":                  {"1024", "default"},
	}
	for name, w := range want {
		if got := shown.Limits[name]; got != w {
			t.Errorf("limit %s: %+v; want %+v", name, got, w)
		}
	}
	if table := mustCLI(t, "tenant", "show", "acme"); !strings.Contains(table, "limit statement_timeout") || !strings.Contains(table, "5min (tenant)") {
		t.Errorf("tenant show lacks the limits:\n%s", table)
	}

	mustCLI(t, "tenant", "update", "acme", "--limit", "statement_timeout=")
	if out := mustCLI(t, "tenant", "show", "acme"); !strings.Contains(out, "0 (default)") {
		t.Errorf("after dropping the tenant's statement_timeout:\n%s", out)
	}
	for _, args := range [][]string{
		{"tenant", "update", "acme", "--limit", "max_users=3"},
		{"tenant", "update", "acme", "--limit", "statement_timeout=soon"},
		{"plan", "set", "platinum", "--limit", "storage_mb=1"},
		{"plan", "set", "free"},
	} {
		if _, err := cli(t, args...); err == nil {
			t.Errorf("%v succeeded; want an error", args)
		}
	}
}
