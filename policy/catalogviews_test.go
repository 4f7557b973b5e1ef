package policy

import (
	"testing"
	"time"
)

// TestCatalogViewsStandsIn: the stand-ins replace exactly the references
// to what is hidden where tenants share a database, and a SET of the
// idle-transaction limit is held to the tenant's.
func TestCatalogViewsStandsIn(t *testing.T) {
	p := New()
	for _, tt := range []struct {
		sql   string
		limit time.Duration
		want  string // "" for no rewrite
	}{
		{"SELECT c.oid, c.relpages FROM pg_catalog.pg_class c", 0,
			"SELECT c.oid, c.relpages FROM tenantproxy_catalog.class() c"},
		{"SELECT reltuples FROM pg_class WHERE relname = 'messages'", 0,
			"SELECT reltuples FROM tenantproxy_catalog.class() pg_class WHERE relname = 'messages'"},
		{"SELECT * FROM PG_CLASS", 0, "SELECT * FROM tenantproxy_catalog.class() pg_class"},
		// psql's and ORMs' introspection reads no estimate: sent as it was.
		{"SELECT c.relname FROM pg_catalog.pg_class c", 0, ""},
		{"SELECT relpages FROM app.pg_class", 0, ""},
		{"SELECT setconfig FROM pg_db_role_setting WHERE setrole = 0", 0,
			"SELECT setconfig FROM tenantproxy_catalog.db_role_setting() pg_db_role_setting WHERE setrole = 0"},
		{"SELECT pg_catalog.pg_size_pretty(pg_catalog.pg_table_size(c.oid)) FROM pg_catalog.pg_class c", 0,
			"SELECT pg_catalog.pg_size_pretty(tenantproxy_catalog.table_size(c.oid)) FROM pg_catalog.pg_class c"},
		{"SELECT pg_database_size('app'), pg_relation_size('t', 'main')", 0,
			"SELECT tenantproxy_catalog.database_size('app'), tenantproxy_catalog.relation_size('t', 'main')"},
		{"SELECT app.pg_table_size(1)", 0, ""},
		// Only the statement that changes is generated again.
		{"SELECT 1 /* kept */; SELECT relpages FROM pg_class", 0,
			"SELECT 1 /* kept */;SELECT relpages FROM tenantproxy_catalog.class() pg_class"},
		{"SET idle_in_transaction_session_timeout = 0", time.Minute, "SET idle_in_transaction_session_timeout TO 60000"},
		{"SET idle_in_transaction_session_timeout = '5s'", time.Minute, "SET idle_in_transaction_session_timeout TO 5000"},
		{"SET LOCAL idle_in_transaction_session_timeout TO '2h'", time.Minute, "SET LOCAL idle_in_transaction_session_timeout TO 60000"},
		{"SET idle_in_transaction_session_timeout = 1000", time.Minute, "SET idle_in_transaction_session_timeout TO 1000"},
		{"SET idle_in_transaction_session_timeout = 0", 0, ""},
		{"SELECT 1", time.Minute, ""},
	} {
		got := string(p.CatalogViews([]byte(tt.sql), tt.limit))
		if got != tt.want {
			t.Errorf("CatalogViews(%q, %v) = %q; want %q", tt.sql, tt.limit, got, tt.want)
		}
	}
}

// TestRoleSettingsStandsInForTheDatabaseTier: in a tenant's own database
// only pg_db_role_setting is replaced, by the stand-in in the proxy's
// schema there; its own sizes and estimates are left as they are.
func TestRoleSettingsStandsInForTheDatabaseTier(t *testing.T) {
	p := New()
	for _, tt := range []struct{ sql, want string }{
		{"SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setrole = 0 AND setdatabase = '16384'::oid",
			"SELECT unnest(setconfig) FROM pg_tenantproxy.db_role_setting() pg_db_role_setting WHERE setrole = 0 AND setdatabase = '16384'::oid"},
		{"SELECT rolname, unnest(setconfig) FROM pg_catalog.pg_db_role_setting s, pg_roles r WHERE setrole = r.oid",
			"SELECT rolname, unnest(setconfig) FROM pg_tenantproxy.db_role_setting() s, pg_roles r WHERE setrole = r.oid"},
		{"SELECT relpages, pg_table_size(oid), pg_database_size(current_database()) FROM pg_class", ""},
		{"SELECT * FROM app.pg_db_role_setting", ""},
	} {
		if got := string(p.RoleSettings([]byte(tt.sql))); got != tt.want {
			t.Errorf("RoleSettings(%q) = %q; want %q", tt.sql, got, tt.want)
		}
	}
}

// TestCatalogViewsReadsNoHotPathWord: texts without the names the
// rewrite looks for cost a scan and no allocation.
func TestCatalogViewsReadsNoHotPathWord(t *testing.T) {
	p := New()
	sql := []byte("SELECT id, body FROM messages WHERE channel_id = $1 ORDER BY id DESC LIMIT 50")
	if n := testing.AllocsPerRun(100, func() { p.CatalogViews(sql, time.Minute) }); n != 0 {
		t.Errorf("CatalogViews of plain DML allocates %v times; want 0", n)
	}
}

// TestCatalogViewsParsesNoIntrospection: a checked statement that reads
// pg_class but none of its estimates (psql's \d, ORMs' introspection) is
// not parsed again for the rewrite; one that reads them is.
func TestCatalogViewsParsesNoIntrospection(t *testing.T) {
	p := New()
	for _, tt := range []struct {
		sql    string
		parses uint64
	}{
		{"SELECT c.oid, c.relname FROM pg_catalog.pg_class c WHERE c.relname = 'messages'", 0},
		{"SELECT c.relpages FROM pg_catalog.pg_class c", 1},
	} {
		p.Check([]byte(tt.sql), Rules{}, SessionMode)
		before := p.parses.Load()
		p.CatalogViews([]byte(tt.sql), 0)
		if got := p.parses.Load() - before; got != tt.parses {
			t.Errorf("CatalogViews(%q) after Check parsed %d times; want %d", tt.sql, got, tt.parses)
		}
	}
}
