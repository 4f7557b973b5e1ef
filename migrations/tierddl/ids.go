package tierddl

import "strings"

// The proxy's schemas in the shared database. Tenants (the serving role)
// have USAGE on ProxySchema, to call NextIDFunction, and nothing on
// SequenceSchema, where the per-tenant sequences live.
const (
	ProxySchema    = "tenantproxy"
	SequenceSchema = "tenantproxy_ids"
	// NextIDFunction returns a column's next id for the session's tenant.
	NextIDFunction = ProxySchema + ".next_id"
	// ForgetIDsFunction(tenant) drops the tenant's id sequences.
	ForgetIDsFunction = ProxySchema + ".forget_ids"
	// ContinueIDsProcedure(table) moves the session's tenant's id
	// counters of table's id columns past the tenant's highest id there.
	ContinueIDsProcedure = ProxySchema + ".continue_ids"
	// idKeysTable lists the id columns migrations declared: NextIDFunction
	// creates sequences only for those, so a tenant calling it by hand
	// cannot create sequences without end.
	idKeysTable = "id_keys"
	// idSaltTable holds one random value per shared database, hashed into
	// every sequence name, so a name says nothing a tenant could check a
	// guess (another tenant's id) against.
	idSaltTable = "id_salt"
)

// nextIDCall is the default of the id column key.
func nextIDCall(key string) string { return NextIDFunction + "(" + quoteLiteral(key) + ")" }

// Bootstrap is the SQL that prepares a shared database for transformed
// migrations: the proxy's schemas, the id salt and NextIDFunction. It is
// idempotent (the function is replaced, the salt kept) and must run as the
// role that applies migrations (a superuser), which then owns the
// function: SECURITY DEFINER lets it create and advance sequences in a
// schema the serving role cannot reach.
//
// Each tenant gets one sequence per id column, created on the tenant's
// first insert, so its ids go 1, 2, 3 … whatever other tenants insert.
// Two sessions inserting the tenant's first row at once both try to
// create the sequence: the second waits on the first's uncommitted
// catalog row, then gets unique_violation (or duplicate_table), which the
// function takes as "already there". currval and lastval of these
// sequences need privileges the serving role does not have: use
// INSERT … RETURNING.
//
// ForgetIDsFunction, for the migration role only, drops a tenant's
// sequences: a deleted tenant's go with its rows.
//
// ContinueIDsProcedure serves the shared tier's COPY FROM, which loads
// rows with their ids (a clone of another tenant's rows, a restore): once
// they are in, the tenant's counters of the table must pass them, or its
// next insert would take an id the load brought (23505). It reads the
// highest id of the session's tenant's rows only (the definer is not
// subject to row-level security, so the tenant column is named) and only
// ever raises a counter, so a tenant calling it by hand learns and
// changes nothing but its own numbering. Like any setval, a counter
// raised while the tenant's own sessions insert into the table may hand
// out again an id one of them took between the read and the setval.
func Bootstrap() string {
	r := strings.NewReplacer(
		"$proxy", ProxySchema, "$seqs", SequenceSchema, "$keys", idKeysTable, "$salt", idSaltTable,
		"$next", NextIDFunction, "$forget", ForgetIDsFunction, "$continue", ContinueIDsProcedure,
		"$serving", quoteIdent(ServingRole), "$guc", quoteLiteral(TenantGUC), "$tenantcol", quoteLiteral(TenantColumn))
	return r.Replace(`CREATE SCHEMA IF NOT EXISTS $proxy;
REVOKE ALL ON SCHEMA $proxy FROM PUBLIC;
GRANT USAGE ON SCHEMA $proxy TO $serving;
CREATE SCHEMA IF NOT EXISTS $seqs;
REVOKE ALL ON SCHEMA $seqs FROM PUBLIC;
CREATE TABLE IF NOT EXISTS $proxy.$keys (key text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS $proxy.$salt (only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row), salt text NOT NULL);
INSERT INTO $proxy.$salt (salt) VALUES (gen_random_uuid()::text) ON CONFLICT DO NOTHING;
REVOKE ALL ON $proxy.$keys, $proxy.$salt FROM PUBLIC;
CREATE OR REPLACE FUNCTION $proxy.id_sequence(tenant text, key text) RETURNS text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT 'id_' || md5(s.salt || '/' || tenant || '/' || key) FROM $proxy.$salt s $fn$;
REVOKE ALL ON FUNCTION $proxy.id_sequence(text, text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION $forget(tenant text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	k text;
BEGIN
	FOR k IN SELECT key FROM $proxy.$keys LOOP
		EXECUTE format('DROP SEQUENCE IF EXISTS $seqs.%I', $proxy.id_sequence(tenant, k));
	END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION $forget(text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION $proxy.tenant_sequence(tenant text, key text) RETURNS regclass
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	seq text := $proxy.id_sequence(tenant, key);
	rel regclass := to_regclass('$seqs.' || quote_ident(seq));
BEGIN
	IF rel IS NULL THEN
		IF NOT EXISTS (SELECT FROM $proxy.$keys k WHERE k.key = tenant_sequence.key) THEN
			RAISE EXCEPTION 'no migration declared the id column %', key USING ERRCODE = '42704';
		END IF;
		BEGIN
			EXECUTE format('CREATE SEQUENCE $seqs.%I', seq);
		EXCEPTION WHEN unique_violation OR duplicate_table THEN
			-- A concurrent first use created it and committed.
		END;
		rel := to_regclass('$seqs.' || quote_ident(seq));
	END IF;
	RETURN rel;
END
$fn$;
REVOKE ALL ON FUNCTION $proxy.tenant_sequence(text, text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION $next(key text) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	tenant text := NULLIF(current_setting($guc, true), '');
	rel regclass;
BEGIN
	IF tenant IS NULL THEN
		RAISE EXCEPTION 'no tenant is set for this session: ids are numbered per tenant'
			USING ERRCODE = '42501';
	END IF;
	-- The sequence exists but at a tenant's first insert: looked up
	-- here, since calling tenant_sequence every time doubled the cost of
	-- an id (7 to 15 us).
	rel := to_regclass('$seqs.' || quote_ident($proxy.id_sequence(tenant, key)));
	IF rel IS NULL THEN
		rel := $proxy.tenant_sequence(tenant, key);
	END IF;
	RETURN nextval(rel);
END
$fn$;
REVOKE ALL ON FUNCTION $next(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION $next(text) TO $serving;
CREATE OR REPLACE PROCEDURE $continue(tbl regclass)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	tenant text := NULLIF(current_setting($guc, true), '');
	c record;
	high bigint;
	seq regclass;
BEGIN
	IF tenant IS NULL THEN
		RETURN; -- no tenant's rows to continue
	END IF;
	FOR c IN SELECT a.attname, k.key FROM pg_attrdef d
		JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
		CROSS JOIN LATERAL substring(pg_get_expr(d.adbin, d.adrelid) FROM 'next_id\(''([^'']+)''') AS k(key)
		WHERE d.adrelid = tbl AND EXISTS (SELECT FROM $proxy.$keys i WHERE i.key = k.key)
	LOOP
		EXECUTE format('SELECT max(%I) FROM %s WHERE %I = $1', c.attname, tbl, $tenantcol) INTO high USING tenant;
		CONTINUE WHEN high IS NULL;
		seq := $proxy.tenant_sequence(tenant, c.key);
		IF high > coalesce(pg_sequence_last_value(seq), 0) THEN
			PERFORM setval(seq, high);
		END IF;
	END LOOP;
END
$fn$;
REVOKE ALL ON PROCEDURE $continue(regclass) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE $continue(regclass) TO $serving;
`)
}

// AdoptIDs is the SQL that moves an existing shared-tier id column,
// filled from a sequence every tenant shares, to per-tenant ids: the
// column is declared to NextIDFunction and defaults to it, and each
// tenant's sequence is created now, starting past the tenant's highest id,
// so that no new id repeats an old one. It runs as the migration role,
// after Bootstrap, in the migration's transaction.
func AdoptIDs(table, column string) string {
	key := table + "." + column
	r := strings.NewReplacer("$proxy", ProxySchema, "$seqs", SequenceSchema, "$keys", idKeysTable,
		"$table", quoteIdent(table), "$column", quoteIdent(column), "$key", quoteLiteral(key), "$next", nextIDCall(key))
	return r.Replace(`INSERT INTO $proxy.$keys (key) VALUES ($key) ON CONFLICT DO NOTHING;
ALTER TABLE $table ALTER COLUMN $column DROP IDENTITY IF EXISTS, ALTER COLUMN $column SET DEFAULT $next;
DO $adopt$ DECLARE r record; BEGIN
	FOR r IN SELECT tenant_id, max($column) AS high FROM $table GROUP BY tenant_id LOOP
		EXECUTE format('CREATE SEQUENCE IF NOT EXISTS $seqs.%I START %s', $proxy.id_sequence(r.tenant_id, $key), r.high + 1);
	END LOOP;
END $adopt$;
`)
}
