package pool

import (
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// TestTxTargetsOfOneContextShareTheirSwitchQueries: clients of one tenant
// context hold one copy of its switch Queries, not one each; a client
// whose context differs (a tracked setting of its own) gets its own.
func TestTxTargetsOfOneContextShareTheirSwitchQueries(t *testing.T) {
	setup := []string{"SET ROLE tenant_acme", "SELECT pg_catalog.set_config('app.tenant', 'acme', false)"}
	a := NewTxTarget(Target{Setup: slices.Clone(setup)})
	b := NewTxTarget(Target{Setup: slices.Clone(setup)})
	qa, qb := a.q.Value(), b.q.Value()
	if unsafe.StringData(qa.fromOther) != unsafe.StringData(qb.fromOther) || unsafe.StringData(qa.fromNeutral) != unsafe.StringData(qb.fromNeutral) {
		t.Fatal("two TxTargets of one context hold two copies of its switch Queries; want one shared")
	}
	own := NewTxTarget(Target{Setup: append(slices.Clone(setup), "SET search_path = app")})
	qo := own.q.Value()
	if own.Key() == a.Key() || unsafe.StringData(qo.fromOther) == unsafe.StringData(qa.fromOther) {
		t.Fatal("a TxTarget of another context shares the first context's switch Queries")
	}
	if !strings.Contains(qo.fromOther, "SET search_path = app") || strings.Contains(qa.fromOther, "search_path") {
		t.Fatalf("switch Queries: %q and %q; want the search_path in the second only", qa.fromOther, qo.fromOther)
	}
}
