package test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// proxyTableNames are the proxy's own tables in every tenant target: the
// migration ledgers and the isolation canary's table.
var proxyTableNames = []string{"schema_migrations", "app_schema_migrations", "canary"}

// TestProxyTablesOutOfTenantSight: the proxy's bookkeeping and canary
// tables are the proxy's, not the tenant's: in no tier does psql's \dt
// (run through the proxy, as the tenant) list them, and the dump a tenant
// takes of what is its (its whole database in the database tier, as its
// own login role; its schema in the schema tier) holds none of them.
// A catalog an earlier release migrated kept them in the tenant's schema
// (or public): migrate status reads them there, and migrate up moves
// them, rows and all, so nothing reruns.
func TestProxyTablesOutOfTenantSight(t *testing.T) {
	e := newProxyEnv(t)
	_, addr := e.startProxy(t, proxy.Config{})
	assertProxyTablesHidden(t, e, addr)

	ctx := ctxT(t)
	schema, db := e.objectName(t, "initech"), e.objectName(t, "umbrella")
	legacy := map[string]string{
		migrations.SharedDatabase: `ALTER TABLE tenantproxy.schema_migrations SET SCHEMA public;
			ALTER TABLE tenantproxy.app_schema_migrations SET SCHEMA public;
			ALTER TABLE tenantproxy.canary RENAME TO tenantproxy_canary;
			ALTER TABLE tenantproxy.tenantproxy_canary SET SCHEMA public`,
		migrations.SchemaDatabase: fmt.Sprintf(`ALTER TABLE tenantproxy.%[1]s_schema_migrations SET SCHEMA %[1]s;
			ALTER TABLE %[1]s.%[1]s_schema_migrations RENAME TO schema_migrations;
			ALTER TABLE tenantproxy.%[1]s_app_schema_migrations SET SCHEMA %[1]s;
			ALTER TABLE %[1]s.%[1]s_app_schema_migrations RENAME TO app_schema_migrations;
			ALTER TABLE tenantproxy.%[1]s_canary SET SCHEMA %[1]s;
			ALTER TABLE %[1]s.%[1]s_canary RENAME TO tenantproxy_canary;
			ALTER TABLE %[1]s.tenantproxy_canary OWNER TO %[1]s`, schema),
		db: fmt.Sprintf(`ALTER TABLE pg_tenantproxy.schema_migrations SET SCHEMA public;
			ALTER TABLE pg_tenantproxy.app_schema_migrations SET SCHEMA public;
			ALTER TABLE pg_tenantproxy.canary RENAME TO tenantproxy_canary;
			ALTER TABLE pg_tenantproxy.tenantproxy_canary SET SCHEMA public;
			ALTER TABLE public.schema_migrations OWNER TO %[1]s;
			ALTER TABLE public.app_schema_migrations OWNER TO %[1]s;
			ALTER TABLE public.tenantproxy_canary OWNER TO %[1]s`, db),
	}
	for database, sql := range legacy {
		if err := e.cluster.Exec(ctx, database, sql); err != nil {
			t.Fatalf("back to the earlier layout in %s: %v", database, err)
		}
	}
	// Before the move, status reads the ledgers where they are.
	status, err := migrations.Status(ctx, e.catalogDSN, migrations.Options{})
	if err != nil {
		t.Fatalf("migrate status over the earlier layout: %v", err)
	}
	for _, r := range status.Results {
		// A tenant target's versions are the app's (the chat's).
		v, latest := r.Version, r.Latest
		if r.App != nil {
			v, latest = r.App.Version, r.App.Latest
		}
		if v == 0 || v != latest {
			t.Errorf("migrate status over the earlier layout: %s at version %d of %d; want the version its ledger records", r.Target, v, latest)
		}
	}
	rep, err := migrations.Up(ctx, e.catalogDSN, migrations.Options{})
	if err != nil {
		t.Fatalf("migrate up over the earlier layout: %v", err)
	}
	for _, r := range rep.Results {
		if r.Applied != 0 || (r.App != nil && r.App.Applied != 0) {
			t.Errorf("%s: migrate up reran %d migrations (%v app) once its ledger moved; want none", r.Target, r.Applied, r.App)
		}
	}
	assertProxyTablesHidden(t, e, addr)
}

// assertProxyTablesHidden runs psql's \dt through the proxy as a tenant of
// each tier, and pg_dump of the database tier's database (as its login
// role) and the schema tier's schema, and fails t if any lists a table of
// the proxy's.
func assertProxyTablesHidden(t *testing.T, e *proxyEnv, addr string) {
	t.Helper()
	psql := clientTool(t, "psql")
	for _, sub := range []string{"acme", "initech", "umbrella"} {
		out := run(t, psql, dsn(addr, "alice."+sub, tenantPassword), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", `\dt`)
		if !strings.Contains(out, "|messages|") {
			t.Errorf("%s: \\dt lists no chat table, so it proves nothing:\n%s", sub, out)
		}
		assertNoProxyTable(t, sub+": \\dt through the proxy", out)
	}

	pgDump := clientTool(t, "pg_dump")
	db := e.objectName(t, "umbrella")
	out := run(t, pgDump, "--schema-only", e.tenantLoginDSN(t, "umbrella", db))
	if !strings.Contains(out, "CREATE TABLE public.messages") {
		t.Errorf("umbrella's dump holds no chat table, so it proves nothing:\n%s", out)
	}
	assertNoProxyTable(t, "umbrella: pg_dump as its login role", out)
	// Out of the dump, and not the tenant's either: it owns its database,
	// not the proxy's schema there, and cannot drop the runner's ledger.
	tenant := connect(t, e.tenantLoginDSN(t, "umbrella", db))
	var owner string
	if err := tenant.QueryRow(ctxT(t), "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", migrations.DatabaseProxySchema).Scan(&owner); err != nil || owner == db {
		t.Errorf("umbrella's %s is owned by %q (%v); want the admin role's", migrations.DatabaseProxySchema, owner, err)
	}
	_, err := tenant.Exec(ctxT(t), "DROP TABLE "+migrations.DatabaseProxySchema+".schema_migrations")
	if sqlstateOf(err) != "42501" {
		t.Errorf("umbrella drops the runner's ledger: %v; want 42501", err)
	}

	schema := e.objectName(t, "initech")
	out = run(t, pgDump, "--schema-only", "--schema="+schema, e.cluster.DSN(migrations.SchemaDatabase))
	if !strings.Contains(out, "CREATE TABLE "+schema+".messages") {
		t.Errorf("initech's schema dump holds no chat table, so it proves nothing:\n%s", out)
	}
	assertNoProxyTable(t, "initech: pg_dump of its schema", out)
}

func assertNoProxyTable(t *testing.T, what, out string) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		for _, name := range proxyTableNames {
			if strings.Contains(line, "|"+name+"|") || strings.Contains(line, "."+name+" ") || strings.Contains(line, "tenantproxy_"+name) {
				t.Errorf("%s shows the proxy's table %s: %q", what, name, line)
			}
		}
	}
}
