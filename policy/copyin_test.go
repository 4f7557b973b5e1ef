package policy

import (
	"strings"
	"testing"
)

func TestSharedCopyInLoadsThroughAStagingTable(t *testing.T) {
	p := New()
	for _, tc := range []struct {
		sql  string
		want []string // the load's statements; none: sent as it is
	}{
		{`COPY users (id, "User Name", tenant_id) FROM STDIN WITH (FORMAT csv, HEADER true)`, []string{
			`CREATE TEMP TABLE pg_temp.tenantproxy_copy AS SELECT "id", "User Name", "tenant_id" FROM "users" WITH NO DATA`,
			`COPY pg_temp.tenantproxy_copy(id, "User Name", tenant_id) FROM STDIN WITH (FORMAT CSV, HEADER true)`,
			`INSERT INTO "users" ("id", "User Name") OVERRIDING SYSTEM VALUE SELECT "id", "User Name" FROM pg_temp.tenantproxy_copy`,
			`CALL tenantproxy.continue_ids('"users"')`,
			`DROP TABLE pg_temp.tenantproxy_copy`,
		}},
		{`copy "public"."t" ( "a" ) from stdin binary;`, []string{
			`CREATE TEMP TABLE pg_temp.tenantproxy_copy AS SELECT "a" FROM "public"."t" WITH NO DATA`,
			`COPY pg_temp.tenantproxy_copy(a) FROM STDIN WITH (FORMAT BINARY)`,
			`INSERT INTO "public"."t" ("a") OVERRIDING SYSTEM VALUE SELECT "a" FROM pg_temp.tenantproxy_copy`,
			`CALL tenantproxy.continue_ids('"public"."t"')`,
			`DROP TABLE pg_temp.tenantproxy_copy`,
		}},
		{`COPY t FROM STDIN`, []string{
			`CREATE TEMP TABLE pg_temp.tenantproxy_copy AS SELECT * FROM "t" WITH NO DATA`,
			`COPY pg_temp.tenantproxy_copy FROM STDIN`,
			`UPDATE pg_temp.tenantproxy_copy SET "tenant_id" = current_setting('app.tenant_id', true) WHERE "tenant_id" IS DISTINCT FROM current_setting('app.tenant_id', true)`,
			`INSERT INTO "t" OVERRIDING SYSTEM VALUE SELECT * FROM pg_temp.tenantproxy_copy`,
			`CALL tenantproxy.continue_ids('"t"')`,
			`DROP TABLE pg_temp.tenantproxy_copy`,
		}},
		{`COPY t TO STDOUT`, nil},
		{`COPY tenantproxy_copy FROM STDIN`, nil},
		{`COPY (SELECT 1) TO STDOUT`, nil},
		{`COPY t FROM STDIN WHERE a > 1`, nil},
		{`COPY t (tenant_id) FROM STDIN`, nil},
		{`COPY t FROM STDIN; SELECT 1`, nil},
		{`SELECT 'COPY t FROM STDIN'`, nil},
		{`COPY t FROM '/etc/passwd'`, nil},
	} {
		load, _, ok := p.SharedCopyIn([]byte(tc.sql))
		if got := strings.Split(load, ";\n"); ok != (tc.want != nil) || ok && strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("SharedCopyIn(%q) = %v\n%s\nwant %v\n%s", tc.sql, ok, load, tc.want != nil, strings.Join(tc.want, ";\n"))
		}
	}
	if _, table, _ := p.SharedCopyIn([]byte(`COPY "public"."User List" (a) FROM STDIN`)); table != "User List" {
		t.Errorf("SharedCopyIn's table = %q; want the relation's own name, as PostgreSQL's CONTEXT gives it", table)
	}
	sel := []byte("SELECT * FROM users")
	if n := testing.AllocsPerRun(100, func() { p.SharedCopyIn(sel) }); n != 0 {
		t.Errorf("SharedCopyIn of a SELECT allocates %v times; want 0", n)
	}
}
