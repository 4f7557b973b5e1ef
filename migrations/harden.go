package migrations

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog/secrets"
)

// Harden takes away from PUBLIC, in the database conn is connected to,
// what lets one tenant observe or disturb another through the server
// itself, so that the isolation holds for a direct connection as the
// serving role or a tenant role, not only behind the proxy's statement
// policy. It needs a superuser (grants on pg_catalog objects belong to
// their bootstrap owner) and is idempotent.
//
// In every tenant-facing database:
//   - pg_stat_activity and the functions behind it: the serving role would
//     see the query texts of every session it runs, i.e. of every tenant
//     of the shared and database tiers; pg_locks and pg_lock_status: who
//     holds what; pg_stats*: most-common values of columns, i.e. other
//     tenants' data in the shared tables; pg_terminate_backend and
//     pg_cancel_backend: the serving role could end every tenant's
//     sessions. The predefined monitoring roles (pg_read_all_stats,
//     pg_signal_backend) get them back, so monitoring keeps working.
//   - UPDATE on pg_settings: its rule calls set_config, so it is SET in
//     the disguise of DML.
//   - set_config stays executable: the proxy applies startup settings
//     with it, and SET can change the same settings anyway; the proxy's
//     policy refuses it.
//
// Where tenants share the database (shared, the shared tier's; or the
// schema tier's), also: advisory locks and pg_notify (keys and channels
// every tenant of the database shares), every statistics view (row counts
// and names of other tenants' tables), relation sizes, and pg_class's
// reltuples, relpages and relallvisible: the planner's estimates of each
// table's rows and pages, which VACUUM and ANALYZE keep close to the truth,
// so another tenant's table (schema tier) or every tenant's rows together
// (shared tier) could be counted. PostgreSQL applies no row security to
// its catalogs, so only column privileges can hide them; every other
// column stays readable, which is all psql's meta-commands and ORMs'
// introspection read. In their place, each tenant gets advisory locks and
// channels of its own (namespace.go), and stand-ins for the sizes,
// estimates and settings stored per role that tools read
// (catalogviews.go).
func Harden(ctx context.Context, conn *pgx.Conn, shared bool) error {
	stmts := []string{
		// pg_settings' UPDATE rule calls set_config: SET under another
		// name, and one the policy would have to recognise in DML.
		"REVOKE UPDATE ON pg_catalog.pg_settings FROM PUBLIC",
		hardenViews(`'pg_stat_activity', 'pg_locks', 'pg_stats', 'pg_stats_ext', 'pg_stats_ext_exprs', 'pg_prepared_xacts'`, "pg_read_all_stats"),
		hardenFunctions(`'pg_stat_get_activity', 'pg_stat_get_backend_activity', 'pg_lock_status', 'pg_blocking_pids'`, "pg_read_all_stats"),
		hardenFunctions(`'pg_terminate_backend', 'pg_cancel_backend'`, "pg_signal_backend"),
	}
	stmts = append(stmts, hideRoleSettings...)
	if shared {
		stmts = append(stmts,
			hardenViewsLike(`'pg\_stat\_%', 'pg\_statio\_%'`, "pg_read_all_stats"),
			hardenFunctionsLike(`'pg\_advisory\_%', 'pg\_try\_advisory\_%', 'pg\_notify', 'pg\_relation\_size', 'pg\_total\_relation\_size', 'pg\_table\_size', 'pg\_indexes\_size', 'pg\_stat\_get\_%'`, "pg_read_all_stats"),
			hardenColumns("pg_class", `'reltuples', 'relpages', 'relallvisible'`, "pg_read_all_stats"),
		)
		stmts = append(stmts, namespaceStmts()...)
		stmts = append(stmts, catalogViewStmts()...)
	}
	if conn.Config().Database == SharedDatabase {
		// The one exception to no TEMP anywhere: the shared tier's COPY
		// FROM STDIN loads through a temporary staging table that the
		// proxy creates and drops within one Query message
		// (policy.SharedCopyIn), since PostgreSQL has no COPY FROM under
		// row-level security. Tenants still create no temporary object
		// there: the shared tier's policy refuses every DDL statement.
		// The serving role's credentials already reach every tenant's
		// rows of the database, so TEMP gives a holder of them nothing.
		stmts = append(stmts, "GRANT TEMPORARY ON DATABASE "+ident(SharedDatabase)+" TO "+ident(ServingRole))
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("hardening database %s: %w", conn.Config().Database, err)
		}
	}
	return nil
}

// hideRoleSettings hides the settings stored per role and database
// (ALTER ROLE … SET, ALTER DATABASE … SET): roles are the server's, so
// pg_db_role_setting, pg_roles.rolconfig and pg_user.useconfig would show
// every tenant what any other stored there — a database-tier tenant's
// role is its own, and apps keep configuration in role settings
// (PostgREST's, for one). Catalog privileges are per database, so every
// database tenants reach gets them (Harden; OwnDatabase for a tenant's
// own, again at every migrate up). The other columns stay readable: psql's
// \du and pg_dump read those. pg_read_all_settings keeps the whole.
var hideRoleSettings = []string{
	"REVOKE SELECT ON pg_catalog.pg_db_role_setting FROM PUBLIC",
	"GRANT SELECT ON pg_catalog.pg_db_role_setting TO pg_read_all_settings",
	hardenColumns("pg_roles", `'rolconfig'`, "pg_read_all_settings"),
	hardenColumns("pg_user", `'useconfig'`, "pg_read_all_settings"),
}

// ownBackendGrant gives a database-tier tenant's login role back, in its
// own database, the pg_terminate_backend Harden took from PUBLIC, so that
// a session can end itself (pg_terminate_backend(pg_backend_pid()), which
// the proxy's policy lets through in that tier's session mode). The grant
// reaches nothing else: function privileges are per database, only the
// login role connects to this one, and PostgreSQL lets a role without
// pg_signal_backend signal only its own role's sessions — the tenant's.
func ownBackendGrant(role string) string {
	return "GRANT EXECUTE ON FUNCTION pg_catalog.pg_terminate_backend(integer, bigint) TO " + ident(role)
}

// hardenViews revokes SELECT on pg_catalog views named in list (an SQL
// list of literals) from PUBLIC and grants it to role. Views missing in
// this server version are skipped.
func hardenViews(list, role string) string {
	return hardenRelations("relname IN ("+list+")", role)
}

func hardenViewsLike(patterns, role string) string {
	return hardenRelations("relname LIKE ANY (ARRAY["+patterns+"])", role)
}

func hardenRelations(cond, role string) string {
	return `DO $harden$ DECLARE r regclass; BEGIN
	FOR r IN SELECT c.oid::regclass FROM pg_catalog.pg_class c
		WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'v' AND ` + cond + ` LOOP
		EXECUTE format('REVOKE SELECT ON %s FROM PUBLIC', r);
		EXECUTE format('GRANT SELECT ON %s TO ` + role + `', r);
	END LOOP; END $harden$`
}

// hardenBackends hardens the shared and schema databases of every
// registered backend again, so that migrate up brings a server prepared by
// an earlier release to this release's hardening, as registration does. It
// runs under migrate up's control lock: two runners granting and revoking
// on the same catalog objects at once would fail each other.
func hardenBackends(ctx context.Context, control *pgx.Conn, keys *secrets.Keyring) error {
	dsns, err := adminDSNs(ctx, control, keys)
	if err != nil {
		return err
	}
	for name, a := range dsns {
		if a.err != nil {
			return fmt.Errorf("migrations: backend %s: %w", name, a.err)
		}
		for _, db := range []string{SharedDatabase, SchemaDatabase} {
			conn, err := ConnectAs(ctx, a.dsn, db)
			if err != nil {
				return fmt.Errorf("migrations: backend %s: %w", name, err)
			}
			err = Harden(ctx, conn, true)
			conn.Close(context.WithoutCancel(ctx))
			if err != nil {
				return fmt.Errorf("migrations: backend %s: %w", name, err)
			}
		}
	}
	return nil
}

// hardenColumns leaves PUBLIC every column of catalog table except those
// in hidden (an SQL list of literals), and grants role the whole table.
// Of the system columns it leaves tableoid, the catalog's own OID, which
// pg_dump reads with every catalog row; the others count the server's
// transactions and hold row positions. Revoking the table privilege drops
// the old column grants with it, so running it again is harmless.
func hardenColumns(table, hidden, role string) string {
	return `DO $harden$ DECLARE cols text; BEGIN
	SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = 'pg_catalog.` + table + `'::regclass AND (a.attnum > 0 OR a.attname = 'tableoid') AND NOT a.attisdropped
		AND a.attname NOT IN (` + hidden + `);
	REVOKE SELECT ON pg_catalog.` + table + ` FROM PUBLIC;
	EXECUTE format('GRANT SELECT (%s) ON pg_catalog.` + table + ` TO PUBLIC', cols);
	GRANT SELECT ON pg_catalog.` + table + ` TO ` + role + `;
	END $harden$`
}

// hardenFunctions revokes EXECUTE on every overload of the pg_catalog
// functions named in list from PUBLIC and grants it to role.
func hardenFunctions(list, role string) string {
	return hardenRoutines("proname IN ("+list+")", role)
}

func hardenFunctionsLike(patterns, role string) string {
	return hardenRoutines("proname LIKE ANY (ARRAY["+patterns+"])", role)
}

func hardenRoutines(cond, role string) string {
	return `DO $harden$ DECLARE f regprocedure; BEGIN
	FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
		WHERE p.pronamespace = 'pg_catalog'::regnamespace AND ` + cond + ` LOOP
		EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
		EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO ` + role + `', f);
	END LOOP; END $harden$`
}
