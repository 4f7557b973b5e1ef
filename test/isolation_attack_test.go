package test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// outcome is what an attack must end in: a SQLSTATE (empty for success)
// and a word of the message. The proxy's refusals say "refused"; the
// server's own say "permission denied", "row-level security", ….
type outcome struct {
	code, msg string
	// alt, when set, is another acceptable message word.
	alt string
}

var (
	refused = outcome{code: "42501", msg: "refused"}
	// harmless: the statement runs, and the test checks it saw nothing of
	// the victim's.
	harmless = outcome{}
)

// attack is one attempt by a tenant with valid credentials to read,
// write, observe or disturb another tenant. In sql, {victim} is the
// victim's subdomain, {name} its schema or database name (objectName),
// {role} isolationEnv.victimRole.
type attack struct {
	name string
	sql  string
	// want applies in every tier unless tiers overrides it.
	want  outcome
	tiers map[catalog.Tier]outcome
	// simpleOnly: several statements in one Query, which the extended
	// protocol cannot carry.
	simpleOnly bool
}

// outcome is the same in both pool modes: the policy's refusal comes
// first in transaction mode too (its hint to use session mode would be
// false), and what would outlive a transaction there pins the attacker to
// its server connection rather than fail (proxy/txpin.go).
func (a attack) outcome(tier catalog.Tier) outcome {
	if o, ok := a.tiers[tier]; ok {
		return o
	}
	return a.want
}

// notShared is the outcome in the schema and database tiers of naming the
// shared tier's tenant_id column, which they do not have.
var notShared = map[catalog.Tier]outcome{
	catalog.TierSchema:   {code: "42703", msg: "tenant_id"},
	catalog.TierDatabase: {code: "42703", msg: "tenant_id"},
}

// noStatistics is the database's answer, where tenants share it, to
// reading pg_class's row and page estimates (migrations.Harden).
var noStatistics = outcome{code: "42501", msg: "permission denied for table pg_class"}

// ownDatabase is for what the database tier's rules allow, alone in its
// database: there the database itself decides, with outcome o.
func ownDatabase(o outcome) map[catalog.Tier]outcome {
	return map[catalog.Tier]outcome{catalog.TierDatabase: o}
}

// notSharedTier is for what only the shared tier's rules refuse: tables
// and statistics shared with other tenants.
func notSharedTier(o outcome) map[catalog.Tier]outcome {
	return map[catalog.Tier]outcome{catalog.TierSchema: o, catalog.TierDatabase: o}
}

func withShared(o outcome, others map[catalog.Tier]outcome) map[catalog.Tier]outcome {
	m := map[catalog.Tier]outcome{catalog.TierShared: o}
	for k, v := range others {
		m[k] = v
	}
	return m
}

var attacks = []attack{
	// Changing the tenant context.
	{name: "SET ROLE to the victim's role", sql: "SET ROLE {role}", want: refused},
	{name: "SET SESSION ROLE", sql: "SET SESSION ROLE {role}", want: refused},
	{name: "SET SESSION AUTHORIZATION", sql: "SET SESSION AUTHORIZATION postgres", want: refused},
	{name: "RESET ROLE back to the serving role", sql: "RESET ROLE", want: refused},
	{name: "SET the tenant setting", sql: "SET app.tenant_id = '{victim}'", want: refused},
	{name: "SET the tenant setting quoted", sql: `SET "app"."tenant_id" TO '{victim}'`, want: refused},
	{name: "SET the tenant setting spaced", sql: "SET app . tenant_id = '{victim}'", want: refused},
	{name: "SET the tenant setting upper-case quoted", sql: `SET "APP.TENANT_ID" = '{victim}'`, want: refused},
	{name: "RESET the tenant setting", sql: "RESET app.tenant_id", want: refused},
	{name: "RESET ALL", sql: "RESET ALL", want: refused},
	{name: "DISCARD ALL", sql: "DISCARD ALL", want: refused},
	{name: "SET LOCAL inside a transaction", sql: "BEGIN; SET LOCAL app.tenant_id = '{victim}'; SELECT body FROM messages; COMMIT", want: refused, simpleOnly: true},
	{name: "set_config", sql: "SELECT set_config('app.tenant_id', '{victim}', false)", want: refused},
	{name: "set_config schema-qualified and quoted", sql: `SELECT "pg_catalog"."set_config"('role', '{role}', false)`, want: refused},
	{name: "set_config spelled with Unicode escapes", sql: `SELECT U&"\0073et_config"('role', '{role}', false)`, want: refused},
	{name: "set_config in FROM", sql: "SELECT * FROM set_config('app.tenant_id', '{victim}', false)", want: refused},
	{name: "set_config in a sub-select", sql: "SELECT body FROM messages WHERE (SELECT set_config('app.tenant_id', '{victim}', true)) IS NOT NULL", want: refused},
	{name: "set_config in a CTE", sql: "WITH x AS (SELECT set_config('app.tenant_id', '{victim}', false)) SELECT * FROM x", want: refused},
	{name: "SET ROLE after a harmless statement", sql: "SELECT 1; SET ROLE {role}", want: refused, simpleOnly: true},
	{name: "SET ROLE hidden after a type-literal backslash", sql: `SELECT name'\' ; SET ROLE {role}; --'`, want: refused, simpleOnly: true},
	{name: "SET ROLE hidden in comments", sql: "/* x */ SET /* y */ ROLE {role}", want: refused},
	{name: "PREPARE of set_config", sql: "PREPARE p AS SELECT set_config('role', '{role}', false)", want: refused},
	{name: "EXPLAIN ANALYZE of set_config", sql: "EXPLAIN ANALYZE SELECT set_config('role', '{role}', false)", want: refused},
	{name: "COPY (query) of set_config", sql: "COPY (SELECT set_config('role', '{role}', false)) TO STDOUT", want: refused},
	{name: "DO block running SET ROLE", sql: "DO $$ BEGIN EXECUTE 'SET ROLE {role}'; END $$", want: refused},
	{name: "PL/pgSQL function running SET ROLE", sql: "CREATE FUNCTION evil() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET ROLE {role}'; END $$", want: refused},
	{name: "SQL function with a SET role clause", sql: "CREATE FUNCTION evil() RETURNS int LANGUAGE sql SET role = '{role}' AS 'SELECT 1'", want: refused},
	{name: "SECURITY DEFINER function", sql: "CREATE FUNCTION evil() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM messages'", want: refused},
	{name: "aggregate whose state function is set_config", sql: "CREATE AGGREGATE evil(text, bool) (sfunc = set_config, stype = text, initcond = 'role')", want: refused},
	{name: "query_to_xml running set_config", sql: "SELECT query_to_xml('SELECT set_config(''role'', ''{role}'', false)', true, true, '')", want: refused},
	{name: "ts_rewrite running a query", sql: "SELECT ts_rewrite('a'::tsquery, 'SELECT set_config(''role'', ''{role}'', false)::tsquery, ''b''::tsquery')", want: refused},
	{name: "UPDATE pg_settings (its rule calls set_config)", sql: "UPDATE pg_settings SET setting = '{victim}' WHERE name = 'app.tenant_id'", want: refused},
	{name: "search_path through pg_settings", sql: "UPDATE pg_catalog.pg_settings SET setting = '{name}' WHERE name = 'search_path'", want: refused},
	// search_path is free in every tier: PostgreSQL skips a schema the
	// role has no USAGE on, so the victim's schema is as good as absent.
	{name: "search_path to the victim's schema", sql: "BEGIN; SET LOCAL search_path = {name}, public; SELECT body FROM messages", want: harmless, simpleOnly: true,
		tiers: map[catalog.Tier]outcome{catalog.TierSchema: {code: "42P01", msg: "does not exist"}}},
	{name: "client encoding that hides statements from the proxy", sql: "SET client_encoding = 'SJIS'", want: refused},
	{name: "standard_conforming_strings off", sql: "SET standard_conforming_strings = off", want: refused},

	// Reading and writing the victim's data.
	{name: "SELECT from the victim's schema", sql: "SELECT body FROM {name}.messages",
		want: outcome{code: "42P01", msg: "does not exist"}, tiers: map[catalog.Tier]outcome{catalog.TierSchema: {code: "42501", msg: "permission denied for schema"}}},
	{name: "INSERT into the victim's schema", sql: "INSERT INTO {name}.users (username) VALUES ('mallory')",
		want: outcome{code: "42P01", msg: "does not exist"}, tiers: map[catalog.Tier]outcome{catalog.TierSchema: {code: "42501", msg: "permission denied for schema"}}},
	{name: "SELECT the victim's rows by tenant_id", sql: "SELECT body FROM messages WHERE tenant_id = '{victim}'", tiers: withShared(harmless, notShared)},
	{name: "INSERT a row for the victim", sql: "INSERT INTO users (tenant_id, username) VALUES ('{victim}', 'mallory')",
		tiers: withShared(outcome{code: "42501", msg: "row-level security"}, notShared)},
	{name: "UPDATE own rows into the victim's", sql: "UPDATE users SET tenant_id = '{victim}'",
		tiers: withShared(outcome{code: "42501", msg: "row-level security"}, notShared)},
	{name: "DELETE the victim's rows", sql: "DELETE FROM messages WHERE tenant_id = '{victim}'", tiers: withShared(harmless, notShared)},
	// A database-tier tenant owns its database and every table in it
	// (issue 13): what the shared tier must not do to a table every tenant
	// shares, it may do to its own.
	{name: "TRUNCATE a shared table", sql: "TRUNCATE messages", want: refused, tiers: ownDatabase(outcome{code: "0A000", msg: "foreign key"})},
	{name: "ALTER TABLE DISABLE ROW LEVEL SECURITY", sql: "ALTER TABLE messages DISABLE ROW LEVEL SECURITY", want: refused, tiers: ownDatabase(harmless)},
	{name: "ALTER TABLE NO FORCE ROW LEVEL SECURITY", sql: "ALTER TABLE messages NO FORCE ROW LEVEL SECURITY", want: refused, tiers: ownDatabase(harmless)},
	{name: "DROP POLICY", sql: "DROP POLICY tenant_isolation ON messages", want: refused, tiers: ownDatabase(outcome{code: "42704", msg: "does not exist"})},
	{name: "view over the shared table", sql: "CREATE OR REPLACE VIEW leak AS SELECT * FROM messages", want: refused, tiers: ownDatabase(harmless)},
	{name: "ALTER TABLE OWNER TO the victim's role", sql: "ALTER TABLE messages OWNER TO {role}", want: refused},
	{name: "temporary table on a pooled connection", sql: "CREATE TEMP TABLE leftover (x text)", want: refused,
		tiers: ownDatabase(harmless)},
	{name: "COPY TO PROGRAM", sql: "COPY messages TO PROGRAM 'cat > /tmp/leak'", want: refused},
	{name: "COPY to a server file", sql: "COPY messages TO '/tmp/leak'", want: refused},
	{name: "lo_import of a server file", sql: "SELECT lo_import('/etc/passwd')", want: refused},
	{name: "large objects of the serving role", sql: "SELECT lo_get(oid) FROM pg_largeobject_metadata", want: refused, tiers: notSharedTier(harmless)},
	{name: "pg_read_file", sql: "SELECT pg_read_file('/etc/passwd')", want: refused},
	{name: "CREATE EXTENSION dblink", sql: "CREATE EXTENSION dblink", want: refused},
	{name: "dblink to the victim's database", sql: "SELECT * FROM dblink('dbname={name}', 'SELECT body FROM messages') AS t(body text)", want: refused},

	// Roles and databases every tenant shares.
	{name: "ALTER ROLE serving role SET role", sql: "ALTER ROLE CURRENT_USER SET role = '{role}'", want: refused},
	{name: "ALTER ROLE serving role PASSWORD", sql: "ALTER ROLE tenantproxy_serving PASSWORD 'locked-out'", want: refused},
	{name: "ALTER USER read-only default for everyone", sql: "ALTER USER CURRENT_USER SET default_transaction_read_only = on", want: refused},
	{name: "GRANT the victim's role", sql: "GRANT {role} TO CURRENT_USER", want: refused},
	{name: "CREATE ROLE", sql: "CREATE ROLE mallory LOGIN PASSWORD 'x'", want: refused},
	{name: "ALTER DATABASE SET the tenant setting", sql: "ALTER DATABASE tenantproxy_shared SET app.tenant_id = '{victim}'", want: refused},
	{name: "two-phase commit with another tenant's gid", sql: "COMMIT PREPARED 'tx-of-{victim}'", want: refused},
	{name: "PREPARE TRANSACTION", sql: "BEGIN; PREPARE TRANSACTION 'tx-of-{victim}'", want: refused, simpleOnly: true},

	// Observing other tenants through the server.
	{name: "pg_stat_activity query texts", sql: "SELECT query FROM pg_stat_activity", want: refused},
	{name: "pg_stat_get_activity", sql: "SELECT query FROM pg_stat_get_activity(NULL)", want: refused},
	{name: "pg_locks", sql: "SELECT * FROM pg_locks", want: refused},
	{name: "pg_stats most common values", sql: "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'messages'", want: refused},
	{name: "pg_stat_user_tables row counts", sql: "SELECT relname, n_live_tup FROM pg_stat_user_tables", want: refused, tiers: ownDatabase(harmless)},
	// Sizes and estimates where tenants share the database: the proxy's
	// stand-ins answer with the tenant's own relations' figures only, and
	// nothing (NULL, 0) for any other's (TestPsqlSizesInTheSharedAndSchemaTiers,
	// TestSharedAndSchemaTiersGivePgDumpWhatRevealsNothing check the
	// figures); a whole-row reference is no column name the proxy
	// rewrites, and the database refuses it.
	{name: "relation size of a shared table", sql: "SELECT pg_total_relation_size('messages')", want: harmless},
	{name: "relation size of the victim's table", sql: "SELECT pg_total_relation_size(c.oid) FROM pg_class c WHERE relname = 'messages'", want: harmless},
	{name: "planner estimates of a shared table's rows", sql: "SELECT reltuples, relpages, relallvisible FROM pg_class WHERE relname = 'messages'", want: harmless},
	{name: "planner estimates through a whole-row reference", sql: "SELECT c::text FROM pg_class c WHERE relname = 'messages'", want: noStatistics, tiers: ownDatabase(harmless)},
	{name: "EXPLAIN estimates over every tenant's rows", sql: "EXPLAIN SELECT * FROM messages WHERE body = 'guess-{victim}'", want: refused, tiers: notSharedTier(harmless)},
	// Channels and lock keys are the tenant's own in every tier (a
	// namespace of its own in the shared and schema tiers:
	// TestIsolationLocksAndChannelsPerTenant); pg_catalog's functions,
	// which reach the database's one space, only in the database tier.
	{name: "LISTEN on the victim's channel", sql: "LISTEN {victim}_events", want: harmless},
	{name: "NOTIFY the victim's channel", sql: "NOTIFY {victim}_events, 'spoofed'", want: harmless},
	{name: "pg_notify the victim's channel", sql: "SELECT pg_notify('{victim}_events', 'spoofed')", want: harmless},
	{name: "advisory lock the victim may use", sql: "SELECT pg_advisory_xact_lock(42)", want: harmless},
	{name: "pg_catalog's pg_notify", sql: "SELECT pg_catalog.pg_notify('{victim}_events', 'spoofed')", want: refused, tiers: ownDatabase(harmless)},
	{name: "pg_catalog's advisory lock, quoted", sql: `SELECT "pg_catalog"."pg_advisory_xact_lock"(42)`, want: refused, tiers: ownDatabase(harmless)},
	{name: "pg_catalog's advisory lock, Unicode-escaped", sql: `SELECT U&"pg\005fcatalog".pg_try_advisory_xact_lock(4, 2)`, want: refused, tiers: ownDatabase(harmless)},
	{name: "LOCK a shared table", sql: "BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE; COMMIT", want: refused, simpleOnly: true, tiers: notSharedTier(harmless)},
	{name: "pg_terminate_backend of every session", sql: "SELECT pg_terminate_backend(pid) FROM pg_stat_activity", want: refused},
	{name: "pg_cancel_backend", sql: "SELECT pg_cancel_backend(1)", want: refused},
	// Permitted: what they show is the attacker's own, or names only, which
	// are random (TestIsolationNamesRevealNoTenant).
	{name: "current_setting of the tenant setting", sql: "SELECT current_setting('app.tenant_id', true)", want: harmless},
	{name: "pg_prepared_statements", sql: "SELECT name, statement FROM pg_prepared_statements", want: harmless},
	{name: "pg_namespace browsing (psql \\dn)", sql: "SELECT nspname FROM pg_catalog.pg_namespace", want: harmless},
	{name: "pg_database names (psql \\l)", sql: "SELECT datname FROM pg_database", want: harmless},
	{name: "pg_roles names (psql \\du)", sql: "SELECT rolname FROM pg_roles", want: harmless},
	{name: "all tables readable in the current database", sql: "SELECT string_agg(body, ',') FROM messages", want: harmless},
}

// TestIsolationAttacks runs every attack as each tier's attacker, through
// the simple and the extended protocol, in session and in transaction
// pooling mode, and checks the exact outcome, that
// the session's tenant context is unchanged afterwards, that nothing the
// attacker got back holds another tenant's secret, and finally that every
// victim's data is untouched.
func TestIsolationAttacks(t *testing.T) {
	e := newIsolationEnv(t)
	if n := len(attacks); n < 60 {
		t.Fatalf("%d attacks; the suite promises at least 60", n)
	}
	for _, p := range isolationPairs {
		for _, run := range [][2]string{
			{proxy.PoolSession, "simple"}, {proxy.PoolSession, "extended"},
			{proxy.PoolTransaction, "simple"}, {proxy.PoolTransaction, "extended"},
		} {
			mode, proto := run[0], run[1]
			t.Run(string(p.tier)+"/"+mode+"/"+proto, func(t *testing.T) {
				conn := e.pgconnIn(t, mode, p.attacker)
				replacer := strings.NewReplacer("{victim}", p.victim, "{name}", e.objectName(t, p.victim), "{role}", e.victimRole)
				baseline := sessionContext(t, conn)
				for _, a := range attacks {
					if a.simpleOnly && proto == "extended" {
						continue
					}
					sql := replacer.Replace(a.sql)
					text, err := runAttack(t, conn, proto, sql)
					want := a.outcome(p.tier)
					checkOutcome(t, a.name, sql, err, want)
					if strings.Count(text, "secret-of-") != strings.Count(text, "secret-of-"+p.attacker) {
						t.Errorf("%s: %q returned another tenant's secret: %q", a.name, sql, text)
					}
					// An error inside an explicit transaction leaves it
					// open; end it before checking the context.
					if _, err := conn.Exec(ctxT(t), "ROLLBACK").ReadAll(); err != nil {
						t.Fatalf("after %s: ROLLBACK: %v", a.name, err)
					}
					if got := sessionContext(t, conn); got != baseline {
						t.Fatalf("after %s (%q) the session context is %q; was %q", a.name, sql, got, baseline)
					}
				}
			})
		}
	}
	for _, p := range isolationPairs {
		e.assertVictimUntouched(t, p.victim)
	}
}

// runAttack sends sql as one simple Query, or as Parse/Bind/Execute/Sync,
// and returns the rows' text.
func runAttack(t *testing.T, conn *pgconn.PgConn, proto, sql string) (string, error) {
	ctx := ctxT(t)
	if proto == "simple" {
		res, err := conn.Exec(ctx, sql).ReadAll()
		return resultText(res), err
	}
	r := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	return resultText([]*pgconn.Result{r}), r.Err
}

func checkOutcome(t *testing.T, name, sql string, err error, want outcome) {
	t.Helper()
	var pgErr *pgconn.PgError
	switch {
	case want.code == "" && err != nil:
		t.Errorf("%s: %q failed with %v; want it to run (harmlessly)", name, sql, err)
	case want.code == "":
	case !errors.As(err, &pgErr):
		t.Errorf("%s: %q gave %v; want %s %q", name, sql, err, want.code, want.msg)
	case pgErr.Code != want.code || !strings.Contains(pgErr.Message, want.msg) && (want.alt == "" || !strings.Contains(pgErr.Message, want.alt)):
		t.Errorf("%s: %q gave %s %q; want %s containing %q", name, sql, pgErr.Code, pgErr.Message, want.code, want.msg)
	case pgErr.Severity != "ERROR":
		t.Errorf("%s: %q gave severity %s; want ERROR, the connection staying usable", name, sql, pgErr.Severity)
	}
}
