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

// Backend describes a PostgreSQL server to register in the catalog.
type Backend struct {
	Name   string
	Region string
	// AdminDSN connects as the role that provisions and migrates; it needs
	// CREATEROLE and CREATEDB, and in practice is a superuser.
	AdminDSN string
	// Capacity bounds the database-tier tenants placed on the server; zero
	// means DefaultCapacity.
	Capacity int
}

// DefaultCapacity is the database-tier capacity of a backend registered
// without one.
const DefaultCapacity = 100

// Lock keys on the control database (session-level advisory locks).
const (
	upLockKey       int64 = 0x74706d6967726174 // "tpmigrat": control migrations and first registration
	registerLockKey int64 = 0x7470626b656e6473 // "tpbkends": backend preparation
)

// RegisterBackend prepares the server behind b.AdminDSN and records it in the
// catalog reached through control, which must be migrated. Preparing means:
// the serving role (LOGIN, NOSUPERUSER, NOBYPASSRLS, NOCREATEROLE,
// NOCREATEDB, NOINHERIT) with a fresh random password, or the one the catalog
// already holds for this backend; the shared and the schema databases, which
// PUBLIC may not connect to; and the shared database's migrations (with the
// per-tenant id function they use, tierddl.Bootstrap). It is
// idempotent, so re-running it repairs a half-prepared server. A server
// carries one serving role: registering one server under two names (or from
// two catalogs) gives the role the password of the last registration.
//
// The admin DSN and the serving password are recorded sealed with keys'
// current key (plain text when keys is nil); a password already recorded is
// opened with keys, so re-registering seals a value written before
// encryption was configured.
func RegisterBackend(ctx context.Context, control *pgx.Conn, b Backend, keys *secrets.Keyring) error {
	if b.Capacity == 0 {
		b.Capacity = DefaultCapacity
	}
	if _, err := control.Exec(ctx, "SELECT pg_advisory_lock($1)", registerLockKey); err != nil {
		return fmt.Errorf("migrations: backend %s: %w", b.Name, err)
	}
	defer control.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", registerLockKey) //nolint:errcheck // the session ends soon; a failed unlock dies with it

	var password string
	err := control.QueryRow(ctx, "SELECT serving_password FROM backends WHERE name = $1", b.Name).Scan(&password)
	if errors.Is(err, pgx.ErrNoRows) {
		password = rand.Text()
	} else if err != nil {
		return fmt.Errorf("migrations: backend %s: %w", b.Name, err)
	} else if password, err = keys.OpenBackend(b.Name, "serving password", password); err != nil {
		return err
	}
	if err := prepareServer(ctx, b, password); err != nil {
		return fmt.Errorf("migrations: backend %s: %w", b.Name, err)
	}
	_, err = control.Exec(ctx, `INSERT INTO backends
		(name, region, admin_dsn, serving_user, serving_password, capacity, shared_database, schema_database)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (name) DO UPDATE SET region = excluded.region, admin_dsn = excluded.admin_dsn,
			serving_password = excluded.serving_password, capacity = excluded.capacity`,
		b.Name, b.Region, keys.Seal(b.AdminDSN), ServingRole, keys.Seal(password), b.Capacity, SharedDatabase, SchemaDatabase)
	if err != nil {
		return fmt.Errorf("migrations: backend %s: recording: %w", b.Name, err)
	}
	return nil
}

func prepareServer(ctx context.Context, b Backend, password string) error {
	admin, err := ConnectAs(ctx, b.AdminDSN, "")
	if err != nil {
		return err
	}
	defer admin.Close(context.WithoutCancel(ctx))

	// Only the verifier travels: the password never reaches the server's
	// statement log.
	verifier, err := scram.NewVerifier(password)
	if err != nil {
		return err
	}
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", ServingRole).Scan(&exists); err != nil {
		return err
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER"
	}
	if err := execFormatted(ctx, admin,
		"SELECT format('"+verb+" ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOINHERIT NOREPLICATION PASSWORD %L', $1::text, $2::text)",
		ServingRole, verifier); err != nil {
		return fmt.Errorf("serving role: %w", err)
	}
	for _, db := range []string{SharedDatabase, SchemaDatabase} {
		if err := ensureDatabase(ctx, admin, db); err != nil {
			return err
		}
	}
	// Hardened again on every registration, so a server prepared by an
	// older release, or loosened by hand, is repaired.
	schema, err := ConnectAs(ctx, b.AdminDSN, SchemaDatabase)
	if err != nil {
		return err
	}
	defer schema.Close(context.WithoutCancel(ctx))
	if err := Harden(ctx, schema, true); err != nil {
		return err
	}
	// With the database, so that it outlives its tenants (prepareProxyTables
	// fills it per tenant).
	if _, err := schema.Exec(ctx, createProxySchema(ProxySchema)); err != nil {
		return err
	}
	shared, err := ConnectAs(ctx, b.AdminDSN, SharedDatabase)
	if err != nil {
		return err
	}
	defer shared.Close(context.WithoutCancel(ctx))
	if err := Harden(ctx, shared, true); err != nil {
		return err
	}
	if _, err := Apply(ctx, shared, Target{Kind: KindShared, Backend: b.Name, Database: SharedDatabase}); err != nil {
		return err
	}
	return nil
}

// ensureDatabase creates database name through admin unless it exists.
func ensureDatabase(ctx context.Context, admin *pgx.Conn, name string) error {
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if err := CreateDatabase(ctx, admin, name); err != nil {
			return err
		}
	}
	return nil
}

// CreateDatabase creates database name through admin (a connection to any
// other database of the server), lets the serving role, and no longer PUBLIC,
// connect to it, takes CREATE on its public schema away from PUBLIC and
// hardens it (Harden) as a database of its own tenant.
func CreateDatabase(ctx context.Context, admin *pgx.Conn, name string) error {
	db := ident(name)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	if _, err := admin.Exec(ctx, "REVOKE ALL ON DATABASE "+db+" FROM PUBLIC; GRANT CONNECT ON DATABASE "+db+" TO "+ident(ServingRole)); err != nil {
		return fmt.Errorf("database %s privileges: %w", name, err)
	}
	cfg := admin.Config().Copy()
	cfg.Database = name
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "REVOKE CREATE ON SCHEMA public FROM PUBLIC"); err != nil {
		return fmt.Errorf("database %s public schema: %w", name, err)
	}
	return Harden(ctx, conn, false)
}

// ConnectAs connects with dsn, to database instead of the DSN's own when
// database is not empty.
func ConnectAs(ctx context.Context, dsn, database string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors can echo the DSN, password included.
		return nil, errors.New("invalid DSN")
	}
	if database != "" {
		cfg.Database = database
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// ConnectLogin connects to database on the server of dsn (an admin DSN,
// whose credentials it replaces) as user with password: a database-tier
// tenant's login role, for work in the tenant's own database.
func ConnectLogin(ctx context.Context, dsn, database, user, password string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("invalid DSN")
	}
	cfg.Database, cfg.User, cfg.Password = database, user, password
	return pgx.ConnectConfig(ctx, cfg)
}

// execFormatted runs the statement that query (a server-side format() call
// quoting its arguments with %I and %L) returns. Utility statements take no
// bind parameters, so this is how values reach them without splicing in Go.
func execFormatted(ctx context.Context, conn DB, query string, args ...any) error {
	var stmt string
	if err := conn.QueryRow(ctx, query, args...).Scan(&stmt); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, stmt)
	return err
}
