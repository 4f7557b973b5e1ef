package migrations

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

// The schemas the proxy's own tables (the migration ledgers and the
// isolation canary's table) live in, in every tenant target. They are the
// proxy's, not the tenant's: no tenant's search_path names them, so psql's
// \dt and an ORM's introspection do not list them.
const (
	// ProxySchema holds them in the shared and schema databases, which
	// are the proxy's own; it is also the schema of the shared tier's id
	// functions (tierddl.ProxySchema).
	ProxySchema = tierddl.ProxySchema
	// DatabaseProxySchema holds them in a database-tier tenant's own
	// database. PostgreSQL reserves the pg_ prefix to system schemas,
	// which pg_dump and psql's \dn leave out: the tenant's dump of its
	// database holds its own objects only and restores anywhere. A schema
	// of another name would either be in that dump (the tenant can read
	// the tables) or break it (pg_dump locks every table it dumps). Only
	// a superuser with allow_system_table_mods may create such a schema,
	// so the tenant, who owns the database, cannot take the name first.
	DatabaseProxySchema = "pg_tenantproxy"
	// canaryTable is the isolation canary's table (package canary).
	canaryTable = "canary"
	// legacyCanaryTable is the canary's table where releases before the
	// proxy schema kept it: in the tenant's own schema (schema tier) or in
	// public.
	legacyCanaryTable = "tenantproxy_canary"
	// proxySchemaLockKey is the advisory lock ("tpschema") under which a
	// database's proxy schema is prepared.
	proxySchemaLockKey int64 = 0x7470736368656d61
)

// proxyName is the schema and name of the proxy's table name in t.
// Schema-tier tenants share one ProxySchema, so their tables carry the
// tenant's schema name, which is opaque like the schema's.
func (t Target) proxyName(name string) (schema, table string) {
	switch t.Kind {
	case KindControl:
		return "public", name
	case KindSchema:
		return ProxySchema, t.Schema + "_" + name
	case KindDatabase:
		return DatabaseProxySchema, name
	default:
		return ProxySchema, name
	}
}

// proxyTable is the proxy's table name in t, qualified.
func (t Target) proxyTable(name string) string { return ident(t.proxyName(name)) }

// legacySchema is where releases before the proxy schema kept the proxy's
// tables in t.
func (t Target) legacySchema() string {
	if t.Kind == KindSchema {
		return t.Schema
	}
	return "public"
}

// CanaryTable is the qualified name of the canary's table of a tenant of
// tier kind (its schema schemaName in the schema tier), as the tenant's
// sessions reach it through the proxy.
func CanaryTable(kind Kind, schemaName string) string {
	return Target{Kind: kind, Schema: schemaName}.proxyTable(canaryTable)
}

// tenantRole is the role t's tenant traffic runs as, to which the proxy's
// tables grant what the runner and the canary need: the serving role in
// the shared tier, the tenant's role in the schema tier, and in the
// database tier login, the tenant's login role, which the runner also
// works as.
func (t Target) tenantRole(login string) string {
	switch t.Kind {
	case KindSchema:
		return t.Schema
	case KindDatabase:
		return login
	default:
		return ServingRole
	}
}

// prepareProxyTables makes t's proxy schema, ledgers and canary table, as
// the admin role on db, in one transaction under t's advisory lock, and
// moves those an earlier release kept in the tenant's schema (or public)
// there, ledgers with their rows. It is idempotent, so a run that stopped
// halfway is completed by the next. login is the database tier's login
// role, "" elsewhere.
//
// The tenant does not own the schema or the tables: the runner writes
// the ledgers (in the database tier as the tenant's login role, which
// gets the DML it needs) and the canary plants and reads its row as the
// tenant.
func prepareProxyTables(ctx context.Context, db DB, t Target, login string) error {
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		// The target's lock, then the database's: schema-tier tenants share
		// the proxy schema, whose creation and grants conflict when two
		// run at once.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1), pg_advisory_xact_lock($2)", t.lockKey(), proxySchemaLockKey); err != nil {
			return err
		}
		schema := ProxySchema
		if t.Kind == KindDatabase {
			schema = DatabaseProxySchema
			if _, err := tx.Exec(ctx, "SET LOCAL allow_system_table_mods = on"); err != nil {
				return err
			}
		}
		role := ident(t.tenantRole(login))
		if _, err := tx.Exec(ctx, createProxySchema(schema)+"; GRANT USAGE ON SCHEMA "+ident(schema)+" TO "+role); err != nil {
			return err
		}
		for _, name := range []string{embeddedLedger, appLedger, legacyCanaryTable} {
			if err := t.moveLegacy(ctx, tx, name); err != nil {
				return err
			}
		}
		for _, name := range []string{embeddedLedger, appLedger} {
			if _, err := tx.Exec(ctx, ledgerDDL(t.proxyTable(name), name)); err != nil {
				return err
			}
		}
		if err := t.createCanary(ctx, tx); err != nil {
			return err
		}
		if t.Kind == KindShared {
			// The per-tenant id function, which the app's shared tables
			// name, is there from the first migrate up on, as it was when
			// the proxy's own migrations made the first tables.
			if _, err := tx.Exec(ctx, tierddl.Bootstrap()); err != nil {
				return err
			}
		}
		grants := "GRANT SELECT, INSERT, DELETE ON " + t.proxyTable(canaryTable) + " TO " + role
		if t.Kind == KindDatabase {
			grants += "; GRANT SELECT, INSERT, DELETE ON " + t.proxyTable(embeddedLedger) + ", " + t.proxyTable(appLedger) + " TO " + role
		}
		_, err := tx.Exec(ctx, grants)
		return err
	})
	if err != nil {
		return fmt.Errorf("migrations: %s: the proxy's tables: %w", t, err)
	}
	return nil
}

// createProxySchema creates schema, which PUBLIC may not use, unless it
// exists.
func createProxySchema(schema string) string {
	return "CREATE SCHEMA IF NOT EXISTS " + ident(schema) + "; REVOKE ALL ON SCHEMA " + ident(schema) + " FROM PUBLIC"
}

// moveLegacy moves t's table name from where an earlier release kept it
// into the proxy schema, unless it is there already, and makes it the
// admin role's.
func (t Target) moveLegacy(ctx context.Context, tx pgx.Tx, name string) error {
	newName := name
	if name == legacyCanaryTable {
		newName = canaryTable
	}
	schema, table := t.proxyName(newName)
	old := ident(t.legacySchema(), name)
	var move bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NULL",
		old, t.proxyTable(newName)).Scan(&move); err != nil || !move {
		return err
	}
	var stmts string
	if t.Kind == KindSchema {
		// Renamed first: schema-tier tenants share the proxy schema, and
		// two moving theirs at once must never hold one name there.
		stmts = "ALTER TABLE " + old + " RENAME TO " + ident(table) + "; " +
			"ALTER TABLE " + ident(t.legacySchema(), table) + " SET SCHEMA " + ident(schema)
	} else {
		// Moved first: the tenant's public schema may hold a table of the
		// new name.
		stmts = "ALTER TABLE " + old + " SET SCHEMA " + ident(schema)
		if table != name {
			stmts += "; ALTER TABLE " + ident(schema, name) + " RENAME TO " + ident(table)
		}
	}
	_, err := tx.Exec(ctx, stmts+"; ALTER TABLE "+t.proxyTable(newName)+" OWNER TO CURRENT_USER")
	return err
}

// createCanary creates t's canary table unless it exists: in the shared
// tier isolated like every shared table (the tenant column, forced,
// fail-closed row-level security), so that a leak of the shared model
// shows there first.
func (t Target) createCanary(ctx context.Context, tx pgx.Tx) error {
	table := t.proxyTable(canaryTable)
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists); err != nil || exists {
		return err
	}
	column, key, isolation := "", "", ""
	if t.Kind == KindShared {
		column, key, isolation = tenantColumnDef+",", "tenant_id, ", isolateSQL(table)
	}
	_, err := tx.Exec(ctx, "CREATE TABLE "+table+" ("+column+
		" token text NOT NULL, planted_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY ("+key+"token));"+isolation)
	return err
}

// ledgerDDL creates ledger name as table unless it exists. The app's
// versions may be timestamps (goose, golang-migrate -format).
func ledgerDDL(table, name string) string {
	versionType := "integer"
	if name == appLedger {
		versionType = "bigint"
	}
	return `CREATE TABLE IF NOT EXISTS ` + table + ` (
		version    ` + versionType + ` PRIMARY KEY,
		name       text NOT NULL,
		checksum   text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`
}

// ensureProxyTables prepares the proxy's tables of a shared or schema
// target (the runner works there as the admin role) when its ledger is
// not in the proxy schema yet: a new target, or one an earlier release
// migrated, whose tables move. A database target's are prepared by
// OwnDatabase, as the admin role, before the runner logs in as the
// tenant, who may not create them.
func (t Target) ensureProxyTables(ctx context.Context, db DB) error {
	if t.Kind != KindShared && t.Kind != KindSchema {
		return nil
	}
	var ready bool
	if err := db.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", t.table()).Scan(&ready); err != nil || ready {
		return err
	}
	return prepareProxyTables(ctx, db, t, "")
}

// readLedger returns t's ledger name, qualified, to read it: in the proxy
// schema, or where an earlier release kept it when the target has not
// been moved yet (migrate status before this release's first migrate
// up), "" when there is none.
func (t Target) readLedger(ctx context.Context, db DB, name string) (string, error) {
	tables := []string{t.ledger(name)}
	if t.Kind != KindControl {
		tables = append(tables, ident(t.legacySchema(), name))
	}
	for _, table := range tables {
		var exists bool
		if err := db.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists); err != nil || exists {
			return table, err
		}
	}
	return "", nil
}

// DropSchemaTenant drops schema-tier tenant schema from the schema
// database db is connected to (as the admin role): its schema with what
// is in it, its tables of the proxy, and its role, after what the role
// was granted in this database (the proxy schema's USAGE), which would
// keep it. Idempotent, so a delete that stopped halfway is completed by
// the next.
func DropSchemaTenant(ctx context.Context, db DB, schema string) error {
	t := Target{Kind: KindSchema, Schema: schema}
	if _, err := db.Exec(ctx, "DROP SCHEMA IF EXISTS "+ident(schema)+" CASCADE; DROP TABLE IF EXISTS "+
		t.proxyTable(embeddedLedger)+", "+t.proxyTable(appLedger)+", "+t.proxyTable(canaryTable)); err != nil {
		return err
	}
	var exists bool
	if err := db.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", schema).Scan(&exists); err != nil || !exists {
		return err
	}
	_, err := db.Exec(ctx, "DROP OWNED BY "+ident(schema)+"; DROP ROLE "+ident(schema))
	return err
}
