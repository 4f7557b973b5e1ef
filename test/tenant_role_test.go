package test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// setSettings writes tenant sub's catalog settings, before any proxy has
// looked the tenant up (the catalog's trigger would invalidate a cached
// copy, but asynchronously).
func (e *proxyEnv) setSettings(t testing.TB, sub, settings string) {
	t.Helper()
	control := connect(t, e.catalogDSN)
	if _, err := control.Exec(ctxT(t), "UPDATE tenants SET settings = $2 WHERE subdomain = $1", sub, settings); err != nil {
		t.Fatal(err)
	}
}

// proxiesByMode starts one proxy per pooling mode over e.
func (e *proxyEnv) proxiesByMode(t testing.TB) map[string]string {
	t.Helper()
	addrs := map[string]string{}
	for _, mode := range poolModes {
		_, addrs[mode] = e.startProxy(t, proxy.Config{PoolMode: mode})
	}
	return addrs
}

// roleAttacks are what procedural code of database-tier tenant umbrella
// (allowed procedural code, so nothing the proxy sees refuses it) does to
// the role its sessions log in as. While every database-tier tenant logged
// in as the serving role, each reached every tenant's new sessions.
var roleAttacks = []struct {
	name, sql string
}{
	{"ALTER ROLE CURRENT_USER SET", `DO $$ BEGIN
		EXECUTE 'ALTER ROLE CURRENT_USER SET search_path = evil';
		EXECUTE 'ALTER ROLE CURRENT_USER SET work_mem = ''77kB''';
	END $$`},
	{"SECURITY DEFINER function", `DO $$ BEGIN
		EXECUTE 'CREATE FUNCTION pg_temp.lend() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $f$ BEGIN
			EXECUTE ''ALTER ROLE CURRENT_USER SET application_name = ''''lent''''''; END $f$';
		PERFORM pg_temp.lend();
	END $$`},
	{"ALTER ROLE serving role SET", `DO $$ BEGIN
		EXECUTE 'ALTER ROLE ` + migrations.ServingRole + ` SET lock_timeout = ''77ms''';
	END $$`},
}

// TestDatabaseTierRoleChangesReachNoOtherTenant: a database-tier tenant's
// code changes its login role's defaults (directly, through a SECURITY
// DEFINER function, or naming the serving role); no other tenant's new
// session, in any tier or pool mode, starts with them. Before each
// database-tier tenant had a role of its own this failed: the changes
// were the serving role's, so every tenant's next session got
// search_path = evil.
func TestDatabaseTierRoleChangesReachNoOtherTenant(t *testing.T) {
	e := newProxyEnv(t)
	e.setSettings(t, "umbrella", `{"policy": {"allow_procedural": true}}`)
	addrs := e.proxiesByMode(t)
	ctx := ctxT(t)
	for i, a := range roleAttacks {
		mode := poolModes[i%len(poolModes)]
		conn, err := pgconn.Connect(ctx, dsn(addrs[mode], "alice.umbrella", tenantPassword))
		if err != nil {
			t.Fatal(err)
		}
		// The serving role is not the tenant's to change: refused by the
		// server now, where it used to succeed.
		_, err = conn.Exec(ctx, a.sql).ReadAll()
		conn.Close(context.Background())
		if a.name == "ALTER ROLE serving role SET" {
			if sqlstateOf(err) != "42501" {
				t.Errorf("%s: %v; want SQLSTATE 42501", a.name, err)
			}
		} else if err != nil {
			t.Errorf("%s (in its own role, %s mode): %v", a.name, mode, err)
		}
	}

	// Victims whose pools are new, so every session below is a new server
	// login that role defaults would reach.
	if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: "stark", Plan: catalog.PlanEnterprise, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
		t.Fatal(err)
	}
	const settings = "SELECT current_setting('search_path') || '|' || current_setting('work_mem') || '|' || current_setting('application_name') || '|' || current_setting('lock_timeout')"
	for _, mode := range poolModes {
		for _, victim := range []string{"stark", "acme", "initech"} {
			conn, err := pgconn.Connect(ctx, dsn(addrs[mode], "alice."+victim, tenantPassword))
			if err != nil {
				t.Fatal(err)
			}
			got := queryText(t, conn, settings)
			conn.Close(context.Background())
			if strings.Contains(got, "evil") || strings.Contains(got, "77") || strings.Contains(got, "lent") {
				t.Errorf("%s's new session (%s mode) starts with %q: another tenant changed its login role", victim, mode, got)
			}
		}
	}
	// The attacker changed its own role's defaults, and only its own.
	admin := connect(t, e.cluster.DSN(migrations.SharedDatabase))
	var own, serving string
	if err := admin.QueryRow(ctx, `SELECT coalesce((SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting WHERE setrole = $1::regrole), ''),
		coalesce((SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting WHERE setrole = $2::regrole), '')`,
		e.objectName(t, "umbrella"), migrations.ServingRole).Scan(&own, &serving); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(own, "search_path=evil") || !strings.Contains(own, "application_name=lent") {
		t.Errorf("umbrella's role defaults are %q; want its own changes (did the attacks run?)", own)
	}
	if serving != "" {
		t.Errorf("the serving role's defaults are %q; want none", serving)
	}
}

// TestDatabaseTierDDLThroughProxy: a database-tier tenant owns its
// database's schema, so in both pool modes it creates, alters and drops
// tables, alters and drops the tables its migrations made, and pgbench
// initializes and runs (CREATE TABLE, TRUNCATE, COPY FROM STDIN, VACUUM,
// ALTER TABLE ADD PRIMARY KEY). Before its role owned the database, every
// CREATE failed with 42501 (the serving role had no CREATE anywhere).
func TestDatabaseTierDDLThroughProxy(t *testing.T) {
	e := newProxyEnv(t)
	if _, err := e.cat.Create(ctxT(t), catalog.CreateRequest{Subdomain: "stark", Plan: catalog.PlanEnterprise, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
		t.Fatal(err)
	}
	addrs := e.proxiesByMode(t)
	pgbench := clientTool(t, "pgbench")
	for i, mode := range poolModes {
		// One tenant per mode: pgbench -i drops and recreates its tables.
		sub := []string{"umbrella", "stark"}[i]
		t.Run(mode, func(t *testing.T) {
			ctx := ctxT(t)
			conn := connect(t, dsn(addrs[mode], "alice."+sub, tenantPassword))
			for _, sql := range []string{
				"CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL)",
				"INSERT INTO notes (body) VALUES ('one'), ('two')",
				"ALTER TABLE notes ADD COLUMN tag text",
				"CREATE INDEX notes_tag ON notes (tag)",
				"ALTER TABLE messages ADD COLUMN pinned boolean NOT NULL DEFAULT false",
				"DROP TABLE files",
				"DROP TABLE notes",
			} {
				if _, err := conn.Exec(ctx, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			d := dsn(addrs[mode], "alice."+sub, tenantPassword)
			run(t, pgbench, "-i", "-s", "1", d)
			out := run(t, pgbench, "-n", "-M", "extended", "-c", "2", "-t", "20", d)
			if !strings.Contains(out, "number of transactions actually processed: 40/40") {
				t.Errorf("pgbench run through the proxy (%s mode):\n%s", mode, out)
			}
			var n int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgbench_accounts").Scan(&n); err != nil || n != 100000 {
				t.Errorf("pgbench_accounts has %d rows (%v); want 100000", n, err)
			}
		})
	}
}

// TestSchemaTierAllowDDLOwnSchemaOnly: a schema-tier tenant with
// allow_ddl creates tables through the proxy in its own schema and
// nowhere else; one without it, and a shared-tier tenant even with it,
// are refused by the policy.
func TestSchemaTierAllowDDLOwnSchemaOnly(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: "wayne", Plan: catalog.PlanStandard, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
		t.Fatal(err)
	}
	e.setSettings(t, "initech", `{"policy": {"allow_ddl": true}}`)
	e.setSettings(t, "globex", `{"policy": {"allow_ddl": true}}`)
	admin := connect(t, e.cluster.DSN(migrations.SchemaDatabase))
	for mode, addr := range e.proxiesByMode(t) {
		t.Run(mode, func(t *testing.T) {
			initech := connect(t, dsn(addr, "alice.initech", tenantPassword))
			table := "notes_" + mode
			if _, err := initech.Exec(ctx, "CREATE TABLE "+table+" (id int PRIMARY KEY)"); err != nil {
				t.Fatalf("allow_ddl tenant CREATE TABLE in its schema: %v", err)
			}
			var where string
			if err := admin.QueryRow(ctx, "SELECT schemaname || '.' || tableowner FROM pg_tables WHERE tablename = $1", table).Scan(&where); err != nil ||
				where != e.objectName(t, "initech")+"."+e.objectName(t, "initech") {
				t.Errorf("the new table is in schema.owner %q (%v); want the tenant's schema and role", where, err)
			}
			for _, other := range []string{"public", e.objectName(t, "wayne")} {
				_, err := initech.Exec(ctx, "CREATE TABLE "+other+".planted_"+mode+" (x int)")
				if sqlstateOf(err) != "42501" {
					t.Errorf("allow_ddl tenant CREATE TABLE in schema %s: %v; want SQLSTATE 42501", other, err)
				}
			}
			for _, sub := range []string{"acme", "globex"} {
				_, err := connect(t, dsn(addr, "alice."+sub, tenantPassword)).Exec(ctx, "CREATE TABLE planted (x int)")
				if sqlstateOf(err) != "42501" {
					t.Errorf("shared-tier tenant %s CREATE TABLE: %v; want SQLSTATE 42501 (schema changes only through migrations)", sub, err)
				}
			}
			_, err := connect(t, dsn(addr, "alice.wayne", tenantPassword)).Exec(ctx, "CREATE TABLE planted (x int)")
			if sqlstateOf(err) != "42501" {
				t.Errorf("schema-tier tenant without allow_ddl CREATE TABLE: %v; want SQLSTATE 42501", err)
			}
		})
	}
}

// TestUpgradeGivesDatabaseTierTenantItsRole: a database-tier tenant as
// releases before per-tenant roles left it (no role, its database and
// tables the admin role's, the serving role its login, no password in the
// catalog) is refused by the proxy rather than let in as the serving role;
// one `migrate up` gives it its role, and a second changes nothing.
func TestUpgradeGivesDatabaseTierTenantItsRole(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	db := e.objectName(t, "umbrella")
	admin := connect(t, e.cluster.DSN(db))
	var adminRole string
	if err := admin.QueryRow(ctx, "SELECT current_user").Scan(&adminRole); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		"REASSIGN OWNED BY " + db + " TO " + adminRole,
		"DROP OWNED BY " + db,
		"ALTER SCHEMA public OWNER TO pg_database_owner",
		"GRANT CONNECT ON DATABASE " + db + " TO " + migrations.ServingRole,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO " + migrations.ServingRole,
		"DROP ROLE " + db,
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if _, err := connect(t, e.catalogDSN).Exec(ctx, "UPDATE tenants SET login_password = NULL WHERE id = 'umbrella'"); err != nil {
		t.Fatal(err)
	}

	_, addr := e.startProxy(t, proxy.Config{})
	if _, err := pgconn.Connect(ctx, dsn(addr, "alice.umbrella", tenantPassword)); err == nil {
		t.Fatalf("a database-tier tenant without a login role was let in")
	}

	for range 2 {
		if _, err := migrations.Up(ctx, e.catalogDSN, migrations.Options{}); err != nil {
			t.Fatalf("migrate up: %v", err)
		}
	}
	var owns string
	if err := admin.QueryRow(ctx, `SELECT (SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database()) || '|' ||
		(SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public') || '|' ||
		(SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'public') || '|' ||
		has_database_privilege($1, current_database(), 'CONNECT')::text`, migrations.ServingRole).Scan(&owns); err != nil {
		t.Fatal(err)
	}
	if want := db + "|" + db + "|" + db + "|false"; owns != want {
		t.Errorf("after migrate up: database|schema|tables owner|serving role CONNECT = %q; want %q", owns, want)
	}
	conn := connect(t, dsn(addr, "alice.umbrella", tenantPassword))
	var user string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil || user != db {
		t.Errorf("upgraded tenant's session runs as %q (%v); want its own role %q", user, err, db)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE after_upgrade (x int); DROP TABLE messages CASCADE"); err != nil {
		t.Errorf("upgraded tenant DDL: %v", err)
	}
}

// TestDatabaseTierMigrationsRunAsTheTenant: the tenant owns its database,
// so it can plant code that a later migration sets off (here a trigger on
// a table the migration writes). migrate up must run that code as the
// tenant's role, never as the backend's admin role, a superuser, whose
// rights the tenant's code would otherwise get.
func TestDatabaseTierMigrationsRunAsTheTenant(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	db := e.objectName(t, "umbrella")
	tenant := connect(t, e.tenantLoginDSN(t, "umbrella", db))
	if _, err := tenant.Exec(ctx, `CREATE TABLE ran_as (who text);
		CREATE TABLE watched (x int);
		CREATE FUNCTION record_who() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO public.ran_as VALUES (session_user || '/' || current_user); RETURN NEW; END $$;
		CREATE TRIGGER planted AFTER INSERT ON watched FOR EACH ROW EXECUTE FUNCTION record_who()`); err != nil {
		t.Fatal(err)
	}
	const extra = "CREATE TABLE added_later (x int); INSERT INTO watched VALUES (1)"
	sum := sha256.Sum256([]byte(extra))
	opts := migrations.Options{Migrations: func(k migrations.Kind) ([]migrations.Migration, error) {
		ms, err := migrations.For(k)
		if k == migrations.KindDatabase {
			ms = append(slices.Clone(ms), migrations.Migration{Version: 9000, Name: "added_later", SQL: extra, Checksum: hex.EncodeToString(sum[:])})
		}
		return ms, err
	}}
	if _, err := migrations.Up(ctx, e.catalogDSN, opts); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	var who, owner string
	if err := tenant.QueryRow(ctx, "SELECT (SELECT string_agg(who, ',') FROM ran_as), (SELECT tableowner FROM pg_tables WHERE tablename = 'added_later')").
		Scan(&who, &owner); err != nil {
		t.Fatal(err)
	}
	if want := db + "/" + db; who != want || owner != db {
		t.Errorf("the tenant's trigger ran as %q and the new table is %q's; want %q and the tenant's own", who, owner, want)
	}
}
