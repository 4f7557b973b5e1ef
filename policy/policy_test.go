package policy

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/migrations"
)

var tiers = []catalog.Tier{catalog.TierShared, catalog.TierSchema, catalog.TierDatabase}

// refusedEverywhere must be refused in every tier whatever the settings,
// with a reason containing the given word.
var refusedEverywhere = []struct{ sql, why string }{
	{"SET ROLE tenant_b", "ROLE"},
	{"set role = 'tenant_b'", "ROLE"},
	{"SET SESSION ROLE tenant_b", "ROLE"},
	{"SET LOCAL ROLE tenant_b", "ROLE"},
	{`SET "role" TO tenant_b`, "ROLE"},
	{"RESET ROLE", "ROLE"},
	{"SET SESSION AUTHORIZATION postgres", "AUTHORIZATION"},
	{"RESET SESSION AUTHORIZATION", "AUTHORIZATION"},
	{"SET session_authorization TO x", "AUTHORIZATION"},
	{"SET app.tenant_id = 'b'", "app.tenant_id"},
	{"SET " + migrations.TenantGUC + " = 'b'", migrations.TenantGUC},
	{`SET "app"."tenant_id" TO 'b'`, "app.tenant_id"},
	{`SET "APP.TENANT_ID" TO 'b'`, "app.tenant_id"},
	{"SET app . tenant_id = 'b'", "app.tenant_id"},
	{"SET LOCAL APP.TENANT_ID = 'b'", "app.tenant_id"},
	{"RESET app.tenant_id", "app.tenant_id"},
	{"SET tenant.plan = 'enterprise'", "tenant.*"},
	{"SET LOCAL tenant.plan TO 'enterprise'", "tenant.*"},
	{"SET SESSION Tenant.Features = '{\"sso\": true}'", "tenant.*"},
	{`SET "tenant"."plan" TO 'pro'`, "tenant.*"},
	{`SET "TENANT.PLAN" TO 'pro'`, "tenant.*"},
	{"SET tenant . features = '{}'", "tenant.*"},
	{"SET tenant.anything_new = 'x'", "tenant.*"},
	{"SET tenant.plan TO DEFAULT", "tenant.*"},
	{"RESET tenant.plan", "tenant.*"},
	{"RESET tenant.features", "tenant.*"},
	{"SELECT set_config('tenant.plan', 'enterprise', false)", "set_config"},
	{"ALTER ROLE CURRENT_USER SET tenant.plan = 'enterprise'", "AlterRoleSet"},
	{"ALTER DATABASE d SET tenant.features = '{}'", "AlterDatabaseSet"},
	{"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET tenant.plan = 'pro' AS 'select 1'", "tenant.*"},
	{"ALTER FUNCTION f() SET tenant.features = '{}'", "tenant.*"},
	{"SELECT set_config(name, 'b', false) FROM pg_settings", "set_config"},
	{"SELECT set_config('ro' || 'le', 'b', false)", "set_config"},
	{"COMMENT ON DATABASE current_database IS 'acme inc'", "COMMENT ON DATABASE"},
	{"COMMENT ON ROLE tenant_b IS 'acme inc'", "COMMENT ON DATABASE/ROLE"},
	{"SECURITY LABEL ON DATABASE d IS 'x'", "SecLabel"},
	{"SELECT set_config(name, 'b', false) FROM pg_settings WHERE name = 'role'", "ROLE"},
	{"SELECT set_config(name, 'b', false) FROM pg_settings WHERE name <> 'work_mem'", "set_config"},
	{"SELECT set_config(name, 'b', false) FROM pg_settings WHERE name = 'work_mem' OR true", "set_config"},
	{"SELECT set_config(name, 'b', false) FROM pg_settings, t WHERE name = 'work_mem'", "set_config"},
	{"SELECT set_config(t.name, 'b', false) FROM pg_settings WHERE name = 'work_mem'", "set_config"},
	{"WITH pg_settings AS (SELECT 'role' AS name) SELECT set_config(name, 'b', false) FROM pg_settings WHERE name = 'work_mem'", "set_config"},
	{"SELECT 1 FROM t WHERE (SELECT set_config(name, 'b', false) FROM pg_settings WHERE name = 'work_mem') IS NULL", "set_config"},
	{"SELECT set_config('Role', 'b', true)", "ROLE"},
	{"SELECT set_config('client_encoding', 'SJIS', false)", "client encodings"},
	{"SELECT set_config('client_encoding', (SELECT 'SJIS'), false)", "client encodings"},
	{"SELECT set_config('search_path', '', false), set_config('app.tenant_id', 'b', false)", "app.tenant_id"},
	{"RESET ALL", "RESET ALL"},
	{"DISCARD ALL", "DISCARD ALL"},
	{"SELECT set_config('app.tenant_id', 'b', false)", "set_config"},
	{"SELECT pg_catalog.SET_CONFIG('role', 'x', false)", "set_config"},
	{`SELECT "pg_catalog"."set_config"('role', 'x', false)`, "set_config"},
	{`SELECT U&"\0073et_config"('role', 'x', false)`, "set_config"},
	{"SELECT * FROM set_config('role', 'x', true)", "set_config"},
	{"SELECT 1 WHERE EXISTS (SELECT set_config('role','x',true))", "set_config"},
	{"WITH x AS (SELECT set_config('role','x',true)) SELECT * FROM x", "set_config"},
	{"SELECT 1; SET ROLE b", "ROLE"},
	{"SELECT 1; SELECT set_config('role','b',false)", "set_config"},
	{"/* c */ SET /* c */ ROLE b", "ROLE"},
	{"UPDATE t SET x = 1; SET ROLE b", "ROLE"},
	{`SELECT 1 AS "it's"; SET ROLE b`, "ROLE"},
	{`SELECT time'\' ; SET ROLE x; --'`, "ROLE"},
	{"PREPARE p AS SELECT set_config('role','b',false)", "set_config"},
	{"EXPLAIN ANALYZE SELECT set_config('role','b',false)", "set_config"},
	{"COPY (SELECT set_config('role','b',false)) TO STDOUT", "set_config"},
	{"DECLARE c CURSOR FOR SELECT set_config('role','b',false)", "set_config"},
	{"COPY messages TO '/tmp/x'", "COPY"},
	{"COPY messages TO PROGRAM 'cat > /tmp/x'", "COPY"},
	{"COPY messages FROM PROGRAM 'id'", "COPY"},
	{"SELECT query_to_xml('select set_config(''role'',''b'',false)', true, true, '')", "query_to_xml"},
	{"SELECT ts_stat('select 1')", "ts_stat"},
	{"SELECT ts_rewrite('a'::tsquery, 'select 1')", "ts_rewrite"},
	{"SELECT * FROM pg_stat_activity", "pg_stat_activity"},
	{"SELECT query FROM pg_catalog.pg_stat_activity WHERE pid <> pg_backend_pid()", "pg_stat_activity"},
	{`SELECT * FROM "pg_catalog"."PG_STAT_ACTIVITY"`, "pg_stat_activity"},
	{"SELECT * FROM pg_stat_get_activity(NULL)", "pg_stat_get_activity"},
	{"SELECT * FROM pg_locks", "pg_locks"},
	{"SELECT * FROM pg_stats WHERE tablename = 'messages'", "pg_stats"},
	{"SELECT stxdndistinct FROM pg_statistic_ext_data", "pg_statistic_ext_data"},
	{"SELECT * FROM pg_stat_statements", "pg_stat_statements"},
	{"SELECT rolname, rolpassword FROM pg_authid", "pg_authid"},
	{"SELECT usename, passwd FROM pg_shadow", "pg_shadow"},
	{"SELECT pg_terminate_backend(123)", "pg_terminate_backend"},
	{"SELECT pg_cancel_backend(123)", "pg_cancel_backend"},
	{"SELECT pg_terminate_backend(pg_backend_pid() + 1)", "pg_terminate_backend"},
	{"SELECT pg_terminate_backend(pg_backend_pid(), 0)", "pg_terminate_backend"},
	{"SELECT pg_terminate_backend(pid) FROM (VALUES (1)) AS v (pid)", "pg_terminate_backend"},
	{"SELECT pg_cancel_backend(pg_backend_pid())", "pg_cancel_backend"},
	{"SELECT pg_read_file('/etc/passwd')", "pg_read_file"},
	{"SELECT lo_import('/etc/passwd')", "lo_import"},
	{"SELECT dblink('dbname=x', 'select 1')", "dblink"},
	{"ALTER ROLE tenantproxy_serving PASSWORD 'x'", "AlterRole"},
	{"ALTER ROLE CURRENT_USER SET role = 'tenant_b'", "AlterRoleSet"},
	{"ALTER USER tenantproxy_serving SET default_transaction_read_only = on", "AlterRoleSet"},
	{"CREATE ROLE x", "CreateRole"},
	{"GRANT tenant_b TO CURRENT_USER", "GrantRole"},
	{"ALTER DATABASE tenantproxy_shared SET app.tenant_id = 'b'", "AlterDatabaseSet"},
	{"ALTER SYSTEM SET log_statement = 'all'", "AlterSystem"},
	{"LOAD 'plpgsql'", "Load"},
	{"CREATE EXTENSION dblink", "CREATE EXTENSION"},
	{"CREATE EXTENSION plpgsql", "CREATE EXTENSION"},
	{"CREATE EXTENSION IF NOT EXISTS dblink", "dblink"},
	{"CREATE EXTENSION IF NOT EXISTS plpgsql CASCADE", "CREATE EXTENSION"},
	{"CREATE EXTENSION IF NOT EXISTS plpgsql SCHEMA public", "CREATE EXTENSION"},
	{"CREATE EXTENSION IF NOT EXISTS plpgsql; CREATE EXTENSION IF NOT EXISTS dblink", "dblink"},
	{"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'CREATE EXTENSION IF NOT EXISTS plpgsql'", "CREATE EXTENSION"},
	{"CREATE AGGREGATE evil(text, bool) (sfunc = set_config, stype = text)", "Define"},
	{"PREPARE TRANSACTION 'x'", "two-phase"},
	{"COMMIT PREPARED 'other-tenants-gid'", "two-phase"},
	{"CHECKPOINT", "CheckPoint"},
	{"ALTER TABLE messages OWNER TO tenant_b", "owner"},
	{"CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'select 1'", "SECURITY DEFINER"},
	{"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = 'b' AS 'select 1'", "ROLE"},
	{"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.tenant_id = 'b' AS 'select 1'", "app.tenant_id"},
	{"CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT set_config('role','b',false) $$", "set_config"},
	{"CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('role','b',false); END", "set_config"},
	{"ALTER FUNCTION f() SECURITY DEFINER", "SECURITY DEFINER"},
	{"ALTER FUNCTION f() SET role = 'b'", "ROLE"},
	{"CREATE VIEW v AS SELECT * FROM pg_stat_activity", "pg_stat_activity"},
	{"CREATE TABLE t (x text DEFAULT set_config('role','b',false))", "set_config"},
	{"UPDATE pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding'", "pg_settings"},
	{"WITH x AS (UPDATE pg_catalog.pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings' RETURNING 1) SELECT 1", "pg_settings"},
	{"SET client_encoding = 'SJIS'", "UTF8"},
	{"SET NAMES 'BIG5'", "UTF8"},
	{"SET standard_conforming_strings = off", "standard_conforming_strings"},
	{"SELEC 1", "parser"},
}

// tierRules: statements whose verdict depends on the tier's defaults
// (allowed where the tier is listed).
var tierRules = []struct {
	sql     string
	allowed []catalog.Tier
}{
	{"CREATE TABLE t (id int)", []catalog.Tier{catalog.TierDatabase}},
	{"SELECT pg_terminate_backend(pg_backend_pid())", []catalog.Tier{catalog.TierDatabase}},
	{"select pg_catalog.PG_TERMINATE_BACKEND(pg_catalog.pg_backend_pid())", []catalog.Tier{catalog.TierDatabase}},
	{"ALTER TABLE messages DISABLE ROW LEVEL SECURITY", []catalog.Tier{catalog.TierDatabase}},
	{"ALTER TABLE messages NO FORCE ROW LEVEL SECURITY", []catalog.Tier{catalog.TierDatabase}},
	{"DROP TABLE messages", []catalog.Tier{catalog.TierDatabase}},
	{"TRUNCATE messages", []catalog.Tier{catalog.TierDatabase}},
	{"COMMENT ON TABLE messages IS 'x'", []catalog.Tier{catalog.TierDatabase}},
	{"SELECT * INTO copy_of_messages FROM messages", []catalog.Tier{catalog.TierDatabase}},
	{"CREATE TABLE x AS SELECT * FROM messages", []catalog.Tier{catalog.TierDatabase}},
	{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'", []catalog.Tier{catalog.TierDatabase}},
	{"GRANT SELECT ON messages TO PUBLIC", []catalog.Tier{catalog.TierDatabase}},
	{"DO $$ BEGIN EXECUTE 'SET ROLE tenant_b'; END $$", nil},
	{"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET ROLE b'; END $$", nil},
	// pg_catalog's own lock and notification functions reach the
	// database's one space; unqualified calls reach the tenant's own
	// (allowedEverywhere), and so do LISTEN/NOTIFY statements, which the
	// proxy rewrites, but not in function bodies and rules.
	{"SELECT pg_catalog.pg_notify('tenant_b_events', 'x')", []catalog.Tier{catalog.TierDatabase}},
	{`SELECT "pg_catalog".pg_advisory_lock(42)`, []catalog.Tier{catalog.TierDatabase}},
	{`SELECT U&"pg\005fcatalog".pg_try_advisory_xact_lock(1, 2)`, []catalog.Tier{catalog.TierDatabase}},
	{"SELECT mydb.PG_CATALOG.PG_TRY_ADVISORY_LOCK(42)", []catalog.Tier{catalog.TierDatabase}},
	{"SELECT * FROM pg_catalog.pg_listening_channels()", []catalog.Tier{catalog.TierDatabase}},
	{"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'NOTIFY jobs'", []catalog.Tier{catalog.TierDatabase}},
	{"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ LISTEN jobs $$", []catalog.Tier{catalog.TierDatabase}},
	// pg_dump and pg_restore lift the limit on idle transactions first:
	// where tenants share the database, the proxy holds a SET of a value
	// to the tenant's limit (CatalogViews); the other forms it cannot.
	{"SET idle_in_transaction_session_timeout = 0", []catalog.Tier{catalog.TierShared, catalog.TierSchema, catalog.TierDatabase}},
	{"SET LOCAL idle_in_transaction_session_timeout TO '1h'", []catalog.Tier{catalog.TierShared, catalog.TierSchema, catalog.TierDatabase}},
	{"SET SESSION Idle_In_Transaction_Session_Timeout TO DEFAULT", []catalog.Tier{catalog.TierDatabase}},
	{"RESET idle_in_transaction_session_timeout", []catalog.Tier{catalog.TierDatabase}},
	{"SELECT set_config('idle_in_transaction_session_timeout', '0', false)", []catalog.Tier{catalog.TierDatabase}},
	{"SELECT relname, n_live_tup FROM pg_stat_user_tables", []catalog.Tier{catalog.TierDatabase}},
	{"SELECT * FROM pg_statio_user_tables", []catalog.Tier{catalog.TierDatabase}},
	// Sizes, estimates and the settings stored per role: stand-ins where
	// tenants share the database (CatalogViews); the tenant's own
	// database's sizes in the database tier, but no other database's,
	// and the settings through its own database's stand-in (RoleSettings).
	{"SELECT pg_total_relation_size('tenant_b.messages')", []catalog.Tier{catalog.TierShared, catalog.TierSchema, catalog.TierDatabase}},
	{"SELECT relpages FROM pg_class", []catalog.Tier{catalog.TierShared, catalog.TierSchema, catalog.TierDatabase}},
	{"SELECT pg_database_size('tenantproxy_shared')", []catalog.Tier{catalog.TierShared, catalog.TierSchema}},
	{"SELECT setconfig FROM pg_catalog.pg_db_role_setting", []catalog.Tier{catalog.TierShared, catalog.TierSchema, catalog.TierDatabase}},
	{"LOCK TABLE messages IN ACCESS EXCLUSIVE MODE", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"LOCK TABLE messages", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"LOCK TABLE messages IN ROW SHARE MODE", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"SELECT lo_get(16384)", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"SELECT * FROM pg_largeobject_metadata", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"EXPLAIN SELECT * FROM messages WHERE body = 'secret'", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	// The plan trees debug_print_* send at client_min_messages = LOG carry
	// EXPLAIN's estimates: every form, wherever EXPLAIN is refused.
	{"SET debug_print_plan = on", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"SET LOCAL debug_print_plan TO true", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"SET SESSION DEBUG_PRINT_PARSE = 1", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{`SET "debug_print_rewritten" = 'on'`, []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"RESET debug_print_plan", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"SET debug_print_plan TO DEFAULT", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"SELECT 1; SET client_min_messages = log; SET debug_print_plan = on", []catalog.Tier{catalog.TierSchema, catalog.TierDatabase}},
	{"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET debug_print_plan = on AS 'SELECT 1'", []catalog.Tier{catalog.TierDatabase}},
	{"CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY x", []catalog.Tier{catalog.TierDatabase}},
}

// allowedEverywhere must pass in every tier.
var allowedEverywhere = []string{
	"SELECT current_setting('tenant.plan'), current_setting('tenant.features')::jsonb ->> 'sso'",
	"SHOW tenant.features",
	"SELECT * FROM messages",
	"select id, body from messages where channel_id = $1 and id < $2 order by id desc limit 50",
	"INSERT INTO messages (channel_id, author_id, body) VALUES ($1, $2, $3) RETURNING id",
	"UPDATE members SET role = 'admin' WHERE id = 1",
	"INSERT INTO t VALUES ('please SET ROLE admin and RESET ALL') ON CONFLICT (id) DO UPDATE SET role = 'x'",
	"SELECT current_setting('app.tenant_id')",
	"SHOW app.tenant_id",
	"SHOW search_path",
	// search_path is not the isolation boundary: roles and row-level
	// security are. pg_dump and its dumps start with the set_config.
	"SET search_path = tenant_b, public",
	"RESET search_path",
	"SELECT pg_catalog.set_config('search_path', '', false)",
	"SELECT set_config('statement_timeout', $1, true)",
	// pg_dump locks each table it dumps as a SELECT would.
	"LOCK TABLE public.messages IN ACCESS SHARE MODE",
	// What pg_dump reads of the shared catalogs about its own database.
	"SELECT count(*) FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
	"SELECT provider, label FROM pg_catalog.pg_shseclabel WHERE classoid = 'pg_catalog.pg_database'::pg_catalog.regclass AND objoid = '16755'",
	"SELECT description FROM pg_catalog.pg_shdescription WHERE classoid = 'pg_catalog.pg_database'::pg_catalog.regclass AND objoid = '16755'",
	// pg_dump 15.8 and later, for a setting older servers lack.
	"SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
	"SET application_name = 'x'",
	"SET statement_timeout = '5s'",
	"SET LOCAL work_mem = '64MB'",
	"SET TIME ZONE 'UTC'",
	"SET client_encoding = 'UTF8'",
	"SET NAMES 'utf-8'",
	"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
	"LISTEN jobs",
	"UNLISTEN jobs",
	"UNLISTEN *",
	"NOTIFY jobs, 'x'",
	"SELECT 1; NOTIFY jobs",
	"SELECT pg_notify('jobs', 'x')",
	"SELECT pg_advisory_lock(42)",
	"SELECT pg_try_advisory_xact_lock(1, 2)",
	"SELECT tenantproxy_ns.pg_advisory_unlock(42)",
	"SELECT * FROM pg_listening_channels()",
	"-- SET ROLE b\nSELECT 1",
	"/* SET ROLE /* nested */ b */ SELECT 1",
	"SELECT $1::text, 'a''b' AS role",
	"DISCARD PLANS",
	"DISCARD TEMP",
	`SELECT E'\'' AS x`,
	`SELECT E'\\'; SELECT 2`,
	"BEGIN; SELECT 1; COMMIT",
	"START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
	"SAVEPOINT a; ROLLBACK TO SAVEPOINT a; RELEASE a",
	"WITH m AS (DELETE FROM messages WHERE id = 1 RETURNING *) SELECT count(*) FROM m",
	"SELECT pg_backend_pid(), pg_typeof(1), pg_sleep(0)",
	"SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
	"SELECT t.oid, t.typname FROM pg_type t WHERE t.typname = $1",
	"PREPARE p(int) AS SELECT * FROM messages WHERE id = $1",
	"EXECUTE p(1)",
	"DEALLOCATE p",
	"COPY messages TO STDOUT",
	"COPY (SELECT * FROM messages) TO STDOUT WITH (FORMAT csv)",
	"COPY messages (channel_id, author_id, body) FROM STDIN",
	"DECLARE c CURSOR FOR SELECT * FROM messages; FETCH 10 FROM c; CLOSE c",
	"SELECT * FROM pg_prepared_statements",
	// Names only, and tenants' names are random: psql's \du, \l and \d.
	"SELECT datname FROM pg_database",
	"SELECT rolname FROM pg_roles",
	"SELECT r.rolname, ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON m.roleid = b.oid WHERE m.member = r.oid) FROM pg_catalog.pg_roles r",
	"SELECT usename FROM pg_user",
	"SELECT groname, grolist FROM pg_group",
	"SELECT stxname, stxrelid::regclass FROM pg_catalog.pg_statistic_ext WHERE stxrelid = 16384",
	"SET client_min_messages = log",
	"SET LOCAL client_min_messages = debug5",
	"SET debug_pretty_print = on",
	"SHOW debug_print_plan",
	"SELECT name, setting FROM pg_settings WHERE name = 'search_path'",
	"SET CONSTRAINTS ALL DEFERRED",
	"SELECT 'pg_stat_activity', 'set_config(''role'', ''x'', false)'",
	"SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)",
	"INSERT INTO t (x) VALUES (1)",
	"CREATE EXTENSION IF NOT EXISTS plpgsql",
	"create extension if not exists \"plpgsql\"",
}

// TestPolicyExtensionsAreTheOperators: CREATE EXTENSION IF NOT EXISTS is
// allowed for the names NewWith lists, and only those.
func TestPolicyExtensionsAreTheOperators(t *testing.T) {
	for _, tt := range []struct {
		allowed []string
		sql     string
		ok      bool
	}{
		{nil, "CREATE EXTENSION IF NOT EXISTS plpgsql", false},
		{[]string{"citext"}, "CREATE EXTENSION IF NOT EXISTS citext", true},
		{[]string{"citext"}, "CREATE EXTENSION IF NOT EXISTS plpgsql", false},
		{[]string{"citext"}, "CREATE EXTENSION citext", false},
	} {
		reason := NewWith(tt.allowed).Check([]byte(tt.sql), DefaultRules(catalog.TierDatabase), TransactionMode)
		if (reason == "") != tt.ok {
			t.Errorf("allowing %v: %q gave %q; want allowed %v", tt.allowed, tt.sql, reason, tt.ok)
		}
	}
}

func TestPolicyRefusesInEveryTier(t *testing.T) {
	p := New()
	everything := Rules{DDL: true, Procedural: true, DatabaseWide: true, SharedTables: true, Explain: true}
	for _, tt := range refusedEverywhere {
		for _, r := range []Rules{{}, DefaultRules(catalog.TierSchema), DefaultRules(catalog.TierDatabase), everything} {
			reason := p.Check([]byte(tt.sql), r, SessionMode)
			if reason == "" {
				t.Errorf("%q allowed under %+v; want refused", tt.sql, r)
				continue
			}
			if !strings.Contains(strings.ToLower(reason), strings.ToLower(tt.why)) {
				t.Errorf("%q refused with %q; want a reason naming %q", tt.sql, reason, tt.why)
			}
		}
	}
}

func TestPolicyAllowsPlainWorkInEveryTier(t *testing.T) {
	p := New()
	for _, sql := range allowedEverywhere {
		for _, tier := range tiers {
			if reason := p.Check([]byte(sql), DefaultRules(tier), SessionMode); reason != "" {
				t.Errorf("%s tier: %q refused: %s", tier, sql, reason)
			}
		}
	}
}

func TestPolicyTierDefaults(t *testing.T) {
	p := New()
	for _, tt := range tierRules {
		for _, tier := range tiers {
			want := false
			for _, a := range tt.allowed {
				want = want || a == tier
			}
			reason := p.Check([]byte(tt.sql), DefaultRules(tier), SessionMode)
			if got := reason == ""; got != want {
				t.Errorf("%s tier: %q allowed=%v (reason %q); want allowed=%v", tier, tt.sql, got, reason, want)
			}
		}
	}
}

// TestZeroRulesAreTheSharedTiers: the zero Rules, which a session has
// before per-tenant rules reach it and which RulesFor returns with an
// error, are the strictest.
func TestZeroRulesAreTheSharedTiers(t *testing.T) {
	if DefaultRules(catalog.TierShared) != (Rules{}) {
		t.Fatalf("shared tier rules %+v; want the zero Rules", DefaultRules(catalog.TierShared))
	}
	p := New()
	for _, sql := range []string{"CREATE TABLE t (id int)", "SELECT pg_catalog.pg_notify('x', '')", "EXPLAIN SELECT 1", "RESET idle_in_transaction_session_timeout"} {
		if p.Check([]byte(sql), Rules{}, SessionMode) == "" {
			t.Errorf("Check allowed %q under the zero Rules; want the shared tier's refusal", sql)
		}
	}
}

func TestRulesForSettings(t *testing.T) {
	tests := []struct {
		tier     catalog.Tier
		settings string
		want     Rules
		wantErr  bool
	}{
		{catalog.TierShared, ``, Rules{}, false},
		{catalog.TierShared, `{}`, Rules{}, false},
		{catalog.TierShared, `{"policy": {"allow_explain": true}}`, Rules{Explain: true}, false},
		{catalog.TierShared, `{"policy": {"allow_ddl": true}}`, Rules{}, true},
		{catalog.TierSchema, `{"policy": {"allow_ddl": true}}`, Rules{DDL: true, SharedTables: true, Explain: true}, false},
		{catalog.TierSchema, `{"policy": {"allow_procedural": true}}`, Rules{}, true},
		{catalog.TierDatabase, `{"policy": {"allow_ddl": false, "allow_procedural": true}}`,
			Rules{Procedural: true, DatabaseWide: true, SharedTables: true, Explain: true, OwnBackend: true}, false},
		{catalog.TierDatabase, `{"policy": "yes"}`, Rules{}, true},
		{catalog.TierDatabase, `{"other": 1}`, DefaultRules(catalog.TierDatabase), false},
	}
	for _, tt := range tests {
		tn := &catalog.Tenant{Subdomain: "acme", Tier: tt.tier, Settings: json.RawMessage(tt.settings)}
		got, err := RulesFor(tn)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s %s: error %v; want error=%v", tt.tier, tt.settings, err, tt.wantErr)
			continue
		}
		if err != nil && got != (Rules{}) {
			t.Errorf("%s %s: rules %+v with an error; want the strictest (zero) rules", tt.tier, tt.settings, got)
		}
		if err == nil && got != tt.want {
			t.Errorf("%s %s: %+v; want %+v", tt.tier, tt.settings, got, tt.want)
		}
	}
}

func TestPolicyAllowDDLForSchemaTenant(t *testing.T) {
	p := New()
	r, err := RulesFor(&catalog.Tenant{Tier: catalog.TierSchema, Settings: json.RawMessage(`{"policy": {"allow_ddl": true}}`)})
	if err != nil {
		t.Fatal(err)
	}
	if reason := p.Check([]byte("CREATE TABLE notes (id int)"), r, SessionMode); reason != "" {
		t.Errorf("allow_ddl tenant refused CREATE TABLE: %s", reason)
	}
	if reason := p.Check([]byte("DO $$ BEGIN END $$"), r, SessionMode); reason == "" {
		t.Errorf("allow_ddl tenant allowed DO")
	}
}

// TestFastPathAgreesWithParser: whenever the fast path decides, the
// parser decides the same way under the strictest rules.
func TestFastPathAgreesWithParser(t *testing.T) {
	var all []string
	for _, tt := range refusedEverywhere {
		all = append(all, tt.sql)
	}
	for _, tt := range tierRules {
		all = append(all, tt.sql)
	}
	all = append(all, allowedEverywhere...)
	for _, tt := range txnModeCases {
		all = append(all, tt.sql)
	}
	decided := 0
	for _, sql := range all {
		checkFastAgrees(t, sql)
		if v, _, _ := fast([]byte(sql)); v != fastUnsure {
			decided++
		}
	}
	if decided < 20 {
		t.Errorf("the fast path decided only %d of %d statements; it should handle plain DML and SET ROLE", decided, len(all))
	}
}

// checkFastAgrees checks both verdicts of the lexical pass: the policy's
// under the strictest rules and, for text it allows, transaction mode's.
func checkFastAgrees(t *testing.T, sql string) {
	t.Helper()
	v, reason, deallocates := fast([]byte(sql))
	f := analyze(sql)
	parsed := f.verdict(Rules{})
	switch {
	case strings.HasPrefix(parsed, reasonUnparsable):
		// The server rejects it too; nothing runs either way.
	case parsed == ReasonTooComplex:
		// Too deep for the proxy's parser, not forbidden: text the fast
		// path passes names nothing harmful at any depth, and the server
		// bounds its own stack.
	case v == fastSafe && parsed != "":
		t.Errorf("fast path allowed %q, which the parser refuses: %s", sql, parsed)
	case v == fastRefused && parsed == "":
		t.Errorf("fast path refused %q (%s), which the parser allows", sql, reason)
	case v == fastSafe && (f.txn != "" || f.pin != "" || deallocates != f.dealloc):
		t.Errorf("fast path allowed %q in transaction mode (deallocates: %v); the parser gives refusal %q, pin %q, deallocates %v", sql, deallocates, f.txn, f.pin, f.dealloc)
	}
}

func TestPolicyFastPathDoesNotAllocate(t *testing.T) {
	p := New()
	for _, sql := range []string{
		`SELECT "a"."b", 'x' FROM t WHERE id = $1; UPDATE t SET role = 1`,
		"SET ROLE tenant_b",
	} {
		b := []byte(sql)
		for _, m := range []Mode{SessionMode, TransactionMode} {
			if n := testing.AllocsPerRun(100, func() { p.Check(b, Rules{}, m) }); n != 0 {
				t.Errorf("Check(%q) in %s mode allocates %v times per call; want 0", sql, m, n)
			}
		}
	}
}

func TestPolicyCacheHitDoesNotAllocate(t *testing.T) {
	p := New()
	b := []byte("SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE n.oid = $1")
	if v, _, _ := fast(b); v != fastUnsure {
		t.Fatalf("statement should need the parser")
	}
	p.Check(b, Rules{}, SessionMode)
	for _, m := range []Mode{SessionMode, TransactionMode} {
		if n := testing.AllocsPerRun(100, func() { p.Check(b, Rules{}, m) }); n != 0 {
			t.Fatalf("cached Check in %s mode allocates %v times per call; want 0", m, n)
		}
	}
}

// FuzzPolicy checks that the policy terminates without panicking in either
// mode, never modifies the SQL it inspects, and that the fast path never
// allows what the parser refuses, nor decides transaction mode otherwise.
func FuzzPolicy(f *testing.F) {
	for _, tt := range refusedEverywhere {
		f.Add(tt.sql)
	}
	for _, sql := range allowedEverywhere {
		f.Add(sql)
	}
	f.Add(`DO $a$ '$a$ "x"" ; /* */ E'\'' $1`)
	for _, tt := range txnModeCases {
		f.Add(tt.sql)
	}
	p := New()
	f.Fuzz(func(t *testing.T, sql string) {
		b := []byte(sql)
		p.Check(b, Rules{}, SessionMode)
		p.Check(b, Rules{}, TransactionMode)
		if string(b) != sql {
			t.Fatalf("Check modified its input")
		}
		if strings.IndexByte(sql, 0) < 0 {
			checkFastAgrees(t, sql)
		}
	})
}

func TestPolicyBoundsWhatItParses(t *testing.T) {
	p := New()
	big := "INSERT INTO t (body) VALUES ('" + strings.Repeat("x", MaxParsedStatement) + "')"
	for _, m := range []Mode{SessionMode, TransactionMode} {
		if reason := p.Check([]byte(big), Rules{}, m); reason != "" {
			t.Errorf("%s mode: a large plain INSERT was refused: %s", m, reason)
		}
	}
	bigDDL := "CREATE TABLE t (body text DEFAULT '" + strings.Repeat("x", MaxParsedStatement) + "')"
	if reason := p.Check([]byte(bigDDL), DefaultRules(catalog.TierDatabase), SessionMode); !strings.Contains(reason, "1 MiB") {
		t.Errorf("a statement over 1 MiB that needs the parser: %q; want the size refusal", reason)
	}
}
