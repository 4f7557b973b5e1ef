package migrations

import (
	"maps"
	"slices"
	"strings"
)

// Tenants of the shared and schema tiers share a database, so Harden
// hides from them what would count another tenant's rows or pages:
// pg_class's planner estimates (relpages, reltuples, relallvisible), the
// size functions, and the settings stored per role. Tools read them all
// the same: pg_dump selects pg_class.relpages for every table and, in its
// archive formats, pg_db_role_setting; psql's \d+, \dt+ and \l+ call the
// size functions. Rather than refuse the tools, CatalogSchema answers them
// with what reveals nothing: pg_class with the estimates of the caller's
// own relations and none of any other's, an empty pg_db_role_setting,
// and size functions that measure only the caller's own relations (no
// database at all: a shared database holds every tenant's rows). The
// proxy puts them in place of the originals in the statements a tenant
// sends (policy.CatalogViews). The originals stay revoked, so a statement
// the proxy did not rewrite fails rather than reveals.
//
// The stand-ins of relations are set-returning functions, not views:
// pg_dump forbids its session every view outside pg_catalog
// (restrict_nonsystem_relation_kind, CVE-2024-7348). They and the size
// functions are definer functions owned by the superuser Harden runs as,
// with a fixed search_path. "Own" is what the caller's role owns: a
// schema-tier tenant's tables, whose role the proxy SETs and which the
// role setting still names inside a definer function (as in
// namespace.go). The shared tier's serving role owns none of the
// tenants' tables, whose rows share each table: its sessions get no
// estimate and no size.
const CatalogSchema = "tenantproxy_catalog"

// Names of CatalogSchema's functions that stand in for pg_class and
// pg_db_role_setting in FROM (policy.CatalogViews); its size functions
// are pg_catalog's names without the pg_ prefix (SizeFunctions).
const (
	ClassFunction       = "class"
	RoleSettingFunction = "db_role_setting"
)

// SizeFunctions are the size functions of pg_catalog that CatalogSchema
// stands in for, with the argument lists of their overloads.
var SizeFunctions = map[string][]string{
	"pg_relation_size":       {"regclass", "regclass, text"},
	"pg_table_size":          {"regclass"},
	"pg_total_relation_size": {"regclass"},
	"pg_indexes_size":        {"regclass"},
	"pg_database_size":       {"name", "oid"},
}

// HiddenEstimates are pg_class's columns of planner estimates, with the
// value the stand-in gives for a relation the caller does not own (-1
// reltuples: never counted).
var HiddenEstimates = []struct{ Column, Other string }{
	{"relpages", "0"}, {"reltuples", "-1"}, {"relallvisible", "0"},
}

// ownedByCaller is true for a relation c of the caller's role (none
// without SET ROLE: to_regrole('none') is NULL, no role can be named so).
const ownedByCaller = "c.relowner = pg_catalog.to_regrole(pg_catalog.current_setting('role'))"

// definer makes a function of CatalogSchema's run as its owner with a
// fixed search_path.
const definer = " LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS "

// catalogViewStmts create CatalogSchema and its functions (idempotent).
func catalogViewStmts() []string {
	s := ident(CatalogSchema)
	var cols []string
	for _, e := range HiddenEstimates {
		cols = append(cols, "WHEN '"+e.Column+"' THEN 'CASE WHEN "+strings.ReplaceAll(ownedByCaller, "'", "''")+" THEN c."+e.Column+" ELSE "+e.Other+" END'")
	}
	stmts := []string{
		"CREATE SCHEMA IF NOT EXISTS " + s,
		"REVOKE ALL ON SCHEMA " + s + " FROM PUBLIC",
		"GRANT USAGE ON SCHEMA " + s + " TO PUBLIC",
		// pg_class's own columns in their order, the estimates masked;
		// first tableoid, which pg_dump reads with every catalog row.
		`DO $harden$ DECLARE cols text; defs text; BEGIN
	SELECT string_agg(CASE a.attname ` + strings.Join(cols, " ") + ` ELSE 'c.' || quote_ident(a.attname) END, ', ' ORDER BY a.attnum),
		string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) INTO cols, defs
		FROM pg_catalog.pg_attribute a WHERE a.attrelid = 'pg_catalog.pg_class'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
	EXECUTE format('CREATE OR REPLACE FUNCTION ` + s + `.` + ident(ClassFunction) + `() RETURNS TABLE (tableoid oid, %s)` + definer + `%L',
		defs, 'SELECT c.tableoid, ' || cols || ' FROM pg_catalog.pg_class c');
	END $harden$`,
		roleSettingFunction(CatalogSchema, "false"),
	}
	for _, name := range slices.Sorted(maps.Keys(SizeFunctions)) {
		for _, args := range SizeFunctions[name] {
			stmts = append(stmts, sizeFunction(name, args))
		}
	}
	return stmts
}

// sizeFunction is CatalogSchema's stand-in for the overload (args) of
// size function name: its value for a relation the caller's role owns,
// NULL for any other relation and for every database.
func sizeFunction(name, args string) string {
	call := "pg_catalog." + name + "(c.oid)"
	if strings.Contains(args, ",") {
		call = "pg_catalog." + name + "(c.oid, $2)"
	}
	body := "SELECT " + call + " FROM pg_catalog.pg_class c WHERE c.oid = $1 AND " + ownedByCaller
	if name == "pg_database_size" {
		body = "SELECT NULL::bigint"
	}
	return "CREATE OR REPLACE FUNCTION " + ident(CatalogSchema) + "." + strings.TrimPrefix(name, "pg_") + "(" + args + ") RETURNS bigint" + definer + "$f$ " + body + " $f$"
}

// roleSettingFunction is schema's stand-in for pg_db_role_setting: its
// rows where the SQL condition where (on s, the row, and d, the caller's
// database) holds.
func roleSettingFunction(schema, where string) string {
	return "CREATE OR REPLACE FUNCTION " + ident(schema) + "." + ident(RoleSettingFunction) + "() RETURNS TABLE (setdatabase oid, setrole oid, setconfig text[])" + definer +
		"$f$ SELECT s.setdatabase, s.setrole, s.setconfig FROM pg_catalog.pg_db_role_setting s, pg_catalog.pg_database d" +
		" WHERE d.datname = pg_catalog.current_database() AND " + where + " $f$"
}

// ownRoleSettingStmts make DatabaseProxySchema's stand-in for
// pg_db_role_setting in a database-tier tenant's own database, for its
// login role: the settings of that database (ALTER DATABASE … SET) and of
// its owner, the tenant's login role, there or everywhere (ALTER ROLE …
// [IN DATABASE …] SET). pg_dump's archive formats read the database's
// (it asks for no other); the rest of the table is every other
// database's and role's, and stays hidden (hideRoleSettings), even a
// setting of another role in this database, which only a superuser can
// make. In DatabaseProxySchema, which the tenant cannot take first and
// pg_dump leaves out, so that the function is in none of the tenant's
// dumps and the schema tiers' CatalogSchema name stays free for the
// tenant's own objects.
func ownRoleSettingStmts(role string) []string {
	f := ident(DatabaseProxySchema) + "." + ident(RoleSettingFunction) + "()"
	return []string{
		roleSettingFunction(DatabaseProxySchema, "s.setdatabase IN (0, d.oid) AND s.setrole IN (0, d.datdba)"),
		"REVOKE ALL ON FUNCTION " + f + " FROM PUBLIC",
		"GRANT EXECUTE ON FUNCTION " + f + " TO " + ident(role),
	}
}
