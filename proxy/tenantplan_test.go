package proxy

import (
	"slices"
	"testing"
)

// TestWithPlanReplacesOnlyThePlanSettings: a session's set-up keeps its
// tier context, timeouts and tracked settings in place; only the plan and
// features settings change, and the caller's slice is not written.
func TestWithPlanReplacesOnlyThePlanSettings(t *testing.T) {
	setup := []string{
		`SET app.tenant_id = 'x'`,
		`SET tenant.plan = 'free'`,
		`SET tenant.features = '{}'`,
		`SET statement_timeout = 1000`,
		`SET search_path = a`,
	}
	orig := slices.Clone(setup)
	got := withPlan(setup, []string{`SET tenant.plan = 'pro'`, `SET tenant.features = '{"sso": true}'`})
	want := []string{
		`SET app.tenant_id = 'x'`,
		`SET tenant.plan = 'pro'`,
		`SET tenant.features = '{"sso": true}'`,
		`SET statement_timeout = 1000`,
		`SET search_path = a`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("withPlan = %q; want %q", got, want)
	}
	if !slices.Equal(setup, orig) {
		t.Errorf("withPlan wrote into its argument: %q", setup)
	}
}
