package policy

import (
	"testing"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/router"
)

func TestSessionSettings(t *testing.T) {
	got, err := SessionSettings([]router.Setting{{Name: "application_name", Value: "it's"}})
	if err != nil || len(got) != 1 || got[0] != `SELECT pg_catalog.set_config('application_name', 'it''s', false)` {
		t.Fatalf("SessionSettings = %q, %v", got, err)
	}
	for _, s := range []router.Setting{{Name: "role", Value: "x"}, {Name: "client_encoding", Value: "SJIS"},
		// PGOPTIONS="-c debug_print_plan=on" and its siblings: the plan
		// tree at client_min_messages = LOG is EXPLAIN by another name.
		{Name: "debug_print_plan", Value: "on"}, {Name: "debug_print_parse", Value: "on"},
		{Name: "debug_print_rewritten", Value: "on"},
		// PGOPTIONS="-c tenant.plan=enterprise": the plan is the catalog's.
		{Name: "tenant.plan", Value: "enterprise"}, {Name: "Tenant.Features", Value: "{}"}} {
		if _, err := SessionSettings([]router.Setting{s}); pgerr.CodeOf(err) != pgerr.CodeStatementRefused {
			t.Errorf("setting %s=%s at startup: %v; want CodeStatementRefused", s.Name, s.Value, err)
		}
	}
}
