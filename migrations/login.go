package migrations

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog/secrets"
	"github.com/tenantproxy/tenantproxy/internal/scram"
)

// TenantLoginPassword returns the password of database-tier tenant
// tenantID's login role from the catalog reached through control,
// generating and recording one (sealed with keys) when the tenant has
// none yet. A concurrent caller gets the password the first one recorded,
// so provisioning and `migrate up` never give the role two passwords.
func TenantLoginPassword(ctx context.Context, control DB, keys *secrets.Keyring, tenantID string) (string, error) {
	var stored string
	err := control.QueryRow(ctx, `UPDATE tenants SET login_password = coalesce(login_password, $2)
		WHERE id = $1 AND isolation_level = 'database' RETURNING login_password`,
		tenantID, keys.Seal(rand.Text())).Scan(&stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("migrations: tenant %s: no database-tier tenant of that id", tenantID)
	}
	if err != nil {
		return "", fmt.Errorf("migrations: tenant %s: login password: %w", tenantID, err)
	}
	return OpenTenantLogin(keys, tenantID, stored)
}

// OpenTenantLogin is keys.Open of tenant tenantID's stored login password,
// with an error that names the tenant and never the value.
func OpenTenantLogin(keys *secrets.Keyring, tenantID, stored string) (string, error) {
	plain, err := keys.Open(stored)
	if err != nil {
		return "", fmt.Errorf("tenant %s: login password: %w", tenantID, err)
	}
	return plain, nil
}

// OwnDatabase makes role, with password, the login of the database-tier
// database db is connected to (as the backend's admin role) and the owner
// of what is in it. Idempotent: provisioning runs it once the tenant
// migrations are applied, and `migrate up` after every database target's
// migrations, which both upgrades tenants created before tenants had
// roles of their own and hands the tables of new migrations over.
//
//   - The role is LOGIN and nothing else (NOSUPERUSER NOCREATEDB
//     NOCREATEROLE NOREPLICATION NOBYPASSRLS) and a member of nothing, so
//     what the tenant's code does to it (ALTER ROLE CURRENT_USER SET, a new
//     password) stays with this tenant. Its password is reset to the
//     catalog's, repairing one the tenant changed.
//   - It owns the database and its public schema, and may CONNECT to this
//     database only: PUBLIC and the serving role lose CONNECT here, and
//     every other tenant-facing database is closed to PUBLIC already.
//   - It owns every table, view, sequence, routine and type of the public
//     schema, so the tenant can ALTER and DROP what the migrations created
//     before the tenant had a role (the migrations log in as the role since,
//     so what they create is the tenant's already); extensions' members stay
//     the admin role's.
//   - The proxy's tables (the runner's ledgers, the canary's table) are in
//     the admin role's DatabaseProxySchema, out of the tenant's dumps, and
//     moved there from public where an earlier release kept them
//     (prepareProxyTables); the role gets the DML the runner, which works
//     in this database as the tenant, and the canary need.
//   - It may run pg_terminate_backend here (ownBackendGrant), to end its
//     own session.
//   - Role settings are hidden here as in every database (hideRoleSettings),
//     again for databases created by an earlier release, but for this
//     database's and role's own, which a stand-in shows the role
//     (ownRoleSettingStmts): pg_dump's archive formats read them.
//
// It leaves db's search_path at pg_catalog.
func OwnDatabase(ctx context.Context, db DB, role, password string) error {
	verifier, err := scram.NewVerifier(password)
	if err != nil {
		return err
	}
	// The tenant can create functions in its database; as the admin role,
	// resolve every name in pg_catalog only, so that no overload of the
	// tenant's is a better match for what runs here.
	if _, err := db.Exec(ctx, "SET search_path = pg_catalog"); err != nil {
		return fmt.Errorf("login role %s: %w", role, err)
	}
	var exists bool
	var database string
	if err := db.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1), current_database()", role).Scan(&exists, &database); err != nil {
		return fmt.Errorf("login role %s: %w", role, err)
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER"
	}
	// Only the verifier travels: the password never reaches the server's
	// statement log.
	if err := execFormatted(ctx, db,
		"SELECT format('"+verb+" ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %L', $1::text, $2::text)",
		role, verifier); err != nil {
		return fmt.Errorf("login role %s: %w", role, err)
	}
	// Before handOver, which would give the tenant the proxy's tables an
	// earlier release kept in public.
	if err := prepareProxyTables(ctx, db, Target{Kind: KindDatabase, Database: database}, role); err != nil {
		return err
	}
	r := ident(role)
	stmts := []string{
		"ALTER DATABASE " + ident(database) + " OWNER TO " + r,
		"REVOKE ALL ON DATABASE " + ident(database) + " FROM PUBLIC, " + ident(ServingRole),
		"ALTER SCHEMA public OWNER TO " + r,
		ownBackendGrant(role),
		handOver(role),
	}
	stmts = append(stmts, hideRoleSettings...)
	stmts = append(stmts, ownRoleSettingStmts(role)...)
	for _, s := range stmts {
		if _, err := db.Exec(ctx, s); err != nil {
			return fmt.Errorf("login role %s: %w", role, err)
		}
	}
	return nil
}

// handOver is a DO block that gives owner every table, view, sequence,
// routine and type of the public schema it does not own yet, except
// extensions' members and the sequences of identity and serial columns
// (which follow their table). PL/pgSQL, because the
// objects are known only in the database.
func handOver(owner string) string {
	return `DO $own$ DECLARE
	new_owner name := ` + quoteLiteral(owner) + `;
	new_owner_id oid := (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = new_owner);
	o record;
BEGIN
	FOR o IN SELECT c.oid::regclass AS obj, CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
			WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind
		FROM pg_catalog.pg_class c
		WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
		AND c.relowner <> new_owner_id
		AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
			AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
	LOOP
		EXECUTE format('ALTER %s %s OWNER TO %I', o.kind, o.obj, new_owner);
	END LOOP;
	FOR o IN SELECT p.oid::regprocedure AS obj FROM pg_catalog.pg_proc p
		WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> new_owner_id
		AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
	LOOP
		EXECUTE format('ALTER ROUTINE %s OWNER TO %I', o.obj, new_owner);
	END LOOP;
	FOR o IN SELECT t.oid::regtype AS obj, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END AS kind
		FROM pg_catalog.pg_type t
		WHERE t.typnamespace = 'public'::regnamespace AND t.typowner <> new_owner_id
		AND (t.typtype IN ('d', 'e', 'r') OR (t.typtype = 'c' AND (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c'))
		AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
	LOOP
		EXECUTE format('ALTER %s %s OWNER TO %I', o.kind, o.obj, new_owner);
	END LOOP;
END $own$`
}
