package router

import "testing"

func TestPolicy(t *testing.T) {
	p := NewPolicy(DefaultTenantGUC)
	refused := []string{
		"SET ROLE tenant_b",
		"set role = 'tenant_b'",
		"SET SESSION ROLE tenant_b",
		"SET LOCAL ROLE tenant_b",
		"RESET ROLE",
		"SET SESSION AUTHORIZATION postgres",
		"RESET SESSION AUTHORIZATION",
		"SET session_authorization TO x",
		"SET app.tenant_id = 'b'",
		`SET "app"."tenant_id" TO 'b'`,
		"SET LOCAL APP.TENANT_ID = 'b'",
		"RESET app.tenant_id",
		"RESET ALL",
		"DISCARD ALL",
		"SELECT set_config('app.tenant_id', 'b', false)",
		"SELECT pg_catalog.SET_CONFIG('role', 'x', false)",
		"SELECT 1; SET ROLE b",
		"/* c */ SET /* c */ ROLE b",
		"DO $$ BEGIN EXECUTE 'SET ROLE tenant_b'; END $$",
		"DO $fn$ BEGIN PERFORM set_config('app.tenant_id','b',false); END $fn$",
		"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.tenant_id = 'b' AS 'select 1'",
		"UPDATE t SET x = 1; SET ROLE b",
		`SELECT 1 AS "it's"; SET ROLE b`,
		"SET standard_conforming_strings = off",
		"SELECT query_to_xml('select set_config(''app.tenant_id'', ''b'', false)', true, true, '')",
		`SELECT pg_catalog."query_to_xml_and_xmlschema"('x', true, true, '')`,
	}
	allowed := []string{
		"SELECT * FROM messages",
		"UPDATE members SET role = 'admin' WHERE id = 1",
		"INSERT INTO t VALUES ('please SET ROLE admin and RESET ALL') ON CONFLICT (id) DO UPDATE SET role = 'x'",
		"SELECT current_setting('app.tenant_id')",
		"SHOW app.tenant_id",
		"SET search_path = public",
		"SET application_name = 'x'",
		"-- SET ROLE b\nSELECT 1",
		"/* SET ROLE /* nested */ b */ SELECT 1",
		"SELECT $1::text, 'a''b' AS role",
		"DISCARD PLANS",
		`SELECT E'\'' AS x`,
	}
	for _, sql := range refused {
		if p.Check([]byte(sql)) == "" {
			t.Errorf("policy allowed %q", sql)
		}
	}
	for _, sql := range allowed {
		if r := p.Check([]byte(sql)); r != "" {
			t.Errorf("policy refused %q: %s", sql, r)
		}
	}
}

func TestPolicyDoesNotAllocate(t *testing.T) {
	p := NewPolicy(DefaultTenantGUC)
	sql := []byte(`SELECT "a"."b", 'x' FROM t WHERE id = $1; UPDATE t SET role = 1`)
	if n := testing.AllocsPerRun(100, func() { p.Check(sql) }); n != 0 {
		t.Fatalf("Check allocates %v times per call; want 0", n)
	}
}

// FuzzPolicy checks that the scanner terminates without panicking and
// never modifies the SQL it inspects.
func FuzzPolicy(f *testing.F) {
	f.Add("SET ROLE x")
	f.Add(`DO $a$ '$a$ "x"" ; /* */ E'\'' $1`)
	f.Fuzz(func(t *testing.T, sql string) {
		b := []byte(sql)
		NewPolicy(DefaultTenantGUC).Check(b)
		if string(b) != sql {
			t.Fatalf("Check modified its input")
		}
	})
}
