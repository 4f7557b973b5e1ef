package proxy

import (
	"encoding/json"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func TestPoolModeOfTenantSettingOverridesTheDefault(t *testing.T) {
	cases := []struct {
		settings, def, want string
	}{
		{"", PoolSession, PoolSession},
		{"", PoolTransaction, PoolTransaction},
		{`{"pool_mode": "transaction"}`, PoolSession, PoolTransaction},
		{`{"pool_mode": "session"}`, PoolTransaction, PoolSession},
		{`{"policy": {"allow_ddl": true}}`, PoolTransaction, PoolTransaction},
		// A typo or a malformed document keeps the default rather than
		// locking the tenant out; both modes isolate tenants.
		{`{"pool_mode": "statement"}`, PoolSession, PoolSession},
		{`{"pool_mode": `, PoolTransaction, PoolTransaction},
	}
	for _, c := range cases {
		ten := &catalog.Tenant{Subdomain: "acme", Settings: json.RawMessage(c.settings)}
		if got := poolModeOf(ten, c.def); got != c.want {
			t.Errorf("settings %s, default %s: got %s; want %s", c.settings, c.def, got, c.want)
		}
	}
}

func TestStatementNameDependsOnContextAndStatement(t *testing.T) {
	a := statementName("SET ROLE a", []byte("SELECT 1\x00\x00\x00"))
	if a != statementName("SET ROLE a", []byte("SELECT 1\x00\x00\x00")) {
		t.Fatal("the same statement in the same context got two names")
	}
	if a == statementName("SET ROLE b", []byte("SELECT 1\x00\x00\x00")) {
		t.Fatal("two contexts share a server-side statement name")
	}
	if a == statementName("SET ROLE a", []byte("SELECT 2\x00\x00\x00")) {
		t.Fatal("two statements share a name")
	}
	if len(a) > 63 {
		t.Fatalf("name %q is longer than PostgreSQL's 63-byte identifiers", a)
	}
}
