package test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// How an ORM's driver sends a statement: libpq, node-postgres and
// psycopg2 send text without parameters as a simple Query; psycopg 3,
// pgJDBC and asyncpg go through the extended protocol's unnamed
// statement (psycopg 3 with Django's client-side binding too).
const (
	simple = iota
	extended
)

type ormStatement struct {
	sql  string
	via  int
	args []any
}

// ormConnectSequences are the statements ORMs send when they connect, and
// the ones they commonly send later, read from their sources (file and
// version in each row's comment). check, run in three later transactions,
// must give want: what the sequence set holds across transactions. A
// row without check is accepted when none of its statements fails.
var ormConnectSequences = []struct {
	name        string
	startup     []string // start-up parameters, as dsn query parameters
	statements  []ormStatement
	check, want string
}{
	{
		// Rails 7.1, activerecord/lib/active_record/connection_adapters/
		// postgresql_adapter.rb, configure_connection: the pg gem's
		// set_client_encoding (libpq's PQsetClientEncoding), then
		// client_min_messages=, set_standard_conforming_strings, the
		// interval style, the timezone from its variables
		// (default_timezone :utc), and add_pg_decoders' and
		// load_additional_types' pg_type queries.
		name: "activerecord",
		statements: []ormStatement{
			{sql: "set client_encoding to 'UTF8'"},
			{sql: "SET client_min_messages TO 'warning'"},
			{sql: "SET standard_conforming_strings = on"},
			{sql: "SET intervalstyle = iso_8601"},
			{sql: "SET SESSION timezone TO 'UTC'"},
			{sql: "SELECT t.oid, t.typname FROM pg_type as t WHERE t.typname IN ('int2', 'int4', 'int8', 'oid', 'float4', 'float8', 'numeric', 'bool', 'timestamp', 'timestamptz')"},
			{sql: `SELECT t.oid, t.typname, t.typelem, t.typdelim, t.typinput, r.rngsubtype, t.typtype, t.typbasetype
				FROM pg_type as t
				LEFT JOIN pg_range as r ON oid = rngtypid
				WHERE t.typname IN ('int2', 'int4', 'int8', 'oid', 'float4', 'float8', 'text', 'varchar', 'char', 'name', 'bpchar', 'bool', 'bit', 'varbit', 'date', 'money', 'bytea', 'point', 'hstore', 'json', 'jsonb', 'cidr', 'inet', 'uuid', 'xml', 'tsvector', 'macaddr', 'citext', 'ltree', 'line', 'lseg', 'box', 'path', 'polygon', 'circle', 'numeric', 'interval', 'time', 'timestamp', 'timestamptz')
				OR t.typtype IN ('r', 'e', 'd')
				OR t.typinput = 'array_in(cstring,oid,integer)'::regprocedure
				OR t.typelem != 0`},
		},
		check: "SELECT current_setting('client_min_messages') || ' ' || current_setting('IntervalStyle') || ' ' || current_setting('TimeZone') || ' ' || interval '1 day'",
		want:  "warning iso_8601 UTC P1D",
	},
	{
		// Sequelize 6, src/dialects/postgres/connection-manager.js,
		// connect with its defaults, in one Query as node-postgres
		// sends it.
		name:       "sequelize",
		statements: []ormStatement{{sql: "SET client_min_messages TO warning;SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE;"}},
		check:      "SHOW TimeZone",
		want:       "<+00>-00",
	},
	{
		// Django 5.0, django/db/backends/postgresql/base.py,
		// init_connection_state → _configure_timezone with
		// operations.py's set_time_zone_sql (since 4.2:
		// set_config rather than SET, which psycopg 3 cannot bind),
		// composed client-side and sent through the unnamed statement
		// by psycopg 3, as a simple Query by psycopg2; is_usable's
		// SELECT 1; and psycopg 3's TypeInfo.fetch (psycopg/_typeinfo.py,
		// 3.1), which django.contrib.postgres runs for hstore.
		name: "django",
		statements: []ormStatement{
			{sql: "SELECT set_config('TimeZone', 'Asia/Kathmandu', false)", via: extended},
			{sql: "SELECT set_config('TimeZone', 'UTC', false)"},
			{sql: "SELECT 1", via: extended},
			{sql: `SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, typdelim AS delimiter
				FROM pg_type t WHERE t.oid = to_regtype($1) ORDER BY t.oid`, via: extended, args: []any{"hstore"}},
		},
		check: "SHOW TimeZone",
		want:  "UTC",
	},
	{
		// SQLAlchemy 2.0, lib/sqlalchemy/dialects/postgresql/base.py,
		// PGDialect.initialize: _get_server_version_info,
		// _get_default_schema_name, _set_backslash_escapes, then
		// get_default_isolation_level; set_isolation_level,
		// set_readonly and set_deferrable (the pg8000 dialect's, and
		// the base for others), each SET followed by COMMIT; psycopg2's
		// on_connect hstore look-up (psycopg2 extras.py,
		// HstoreAdapter.get_oids); asyncpg's pre-ping (asyncpg.py,
		// do_ping: an empty statement).
		name: "sqlalchemy",
		statements: []ormStatement{
			{sql: "select pg_catalog.version()"},
			{sql: "select current_schema()"},
			{sql: "show standard_conforming_strings"},
			{sql: "show transaction isolation level"},
			{sql: "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"},
			{sql: "COMMIT"},
			{sql: "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"},
			{sql: "COMMIT"},
			{sql: "SET SESSION CHARACTERISTICS AS TRANSACTION DEFERRABLE"},
			{sql: "COMMIT"},
			{sql: "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid WHERE typname = 'hstore'"},
			{sql: ";", via: extended},
		},
		// Each characteristic is a setting of its own: a later one
		// leaves the earlier ones as they are.
		check: "SELECT current_setting('transaction_isolation') || ' ' || current_setting('transaction_read_only') || ' ' || current_setting('transaction_deferrable')",
		want:  "serializable on on",
	},
	{
		// Prisma 5, quaint/src/connector/postgres/native/mod.rs:
		// PostgreSql::new sends SET search_path as a simple Query with
		// pgbouncer=true (the start-up parameter otherwise), version(),
		// set_tx_isolation_level, server_reset_query in pgbouncer mode;
		// the schema engine's migration lock (schema-engine/connectors/
		// sql-schema-connector/src/flavour/postgres.rs, acquire_lock)
		// and its release.
		name: "prisma",
		statements: []ormStatement{
			{sql: "SET search_path = \"public\";\n"},
			{sql: "SELECT version()", via: extended},
			{sql: "BEGIN"},
			{sql: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"},
			{sql: "DEALLOCATE ALL"},
			{sql: "COMMIT"},
		},
		check: "SHOW search_path",
		want:  "public",
	},
	{
		// Prisma 5's schema engine, schema-engine/connectors/
		// sql-schema-connector/src/flavour/postgres.rs, acquire_lock:
		// the migration lock, which pins the client; its search_path as
		// a start-up parameter, as quaint's to_config sends it without
		// pgbouncer=true. (Not after the SET above, which leaves out the
		// tenant's tenantproxy_ns: the call would reach pg_catalog's
		// function, revoked outside the database tier.)
		name:    "prisma-migrate",
		startup: []string{"search_path=public"},
		statements: []ormStatement{
			{sql: "SELECT pg_advisory_lock(72707369)"},
			{sql: "SELECT pg_advisory_unlock(72707369)"},
		},
	},
	{
		// pgJDBC 42.7 (Hibernate 6 on it): ConnectionFactoryImpl.java,
		// getParametersForStartup's start-up parameters;
		// PgConnection.java: getSchema, setSchema,
		// setTransactionIsolation, getTransactionIsolation, setReadOnly
		// (readOnlyMode=always, autocommit); PgDatabaseMetaData.java,
		// getSQLKeywords, which Hibernate's JDBC environment reads at
		// boot (keyword list shortened).
		name:    "hibernate-pgjdbc",
		startup: []string{"extra_float_digits=3", "DateStyle=ISO", "TimeZone=Europe/Berlin", "client_encoding=UTF8", "application_name=PostgreSQL%20JDBC%20Driver"},
		statements: []ormStatement{
			{sql: "select current_schema()", via: extended},
			{sql: "SET SESSION search_path TO 'public'", via: extended},
			{sql: "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ", via: extended},
			{sql: "SHOW TRANSACTION ISOLATION LEVEL", via: extended},
			{sql: "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", via: extended},
			{sql: "select string_agg(word, ',') from pg_catalog.pg_get_keywords() where word <> ALL ('{a,abs,absolute,action}'::text[])", via: extended},
		},
		check: "SELECT current_setting('transaction_isolation') || ' ' || current_setting('transaction_read_only') || ' ' || current_setting('TimeZone') || ' ' || current_setting('extra_float_digits') || ' ' || current_setting('application_name')",
		want:  "repeatable read on Europe/Berlin 3 PostgreSQL JDBC Driver",
	},
}

// TestTxPoolORMConnectSequencesAreAccepted: the statements ORMs send on
// connect and later, captured from their sources, are accepted in
// transaction mode in every tier, and what they set holds in the later
// transactions of the client, each after another client of the tenant
// has had the pool's one server connection and its default settings.
func TestTxPoolORMConnectSequencesAreAccepted(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 1}, proxy.Config{})
	ctx := ctxT(t)
	for _, orm := range ormConnectSequences {
		for _, tenant := range []string{"acme", "initech", "umbrella"} {
			t.Run(orm.name+"/"+tenant, func(t *testing.T) {
				conn := connect(t, dsn(e.addr, "alice."+tenant, tenantPassword, orm.startup...))
				for _, s := range orm.statements {
					if err := runORMStatement(ctx, conn, s); err != nil {
						t.Fatalf("%s: %v", s.sql, err)
					}
				}
				if orm.check == "" {
					return
				}
				neighbour := connect(t, dsn(e.addr, "alice."+tenant, tenantPassword))
				for i := range 3 {
					if _, err := neighbour.Exec(ctx, "SELECT 1"); err != nil {
						t.Fatal(err)
					}
					var got string
					if err := conn.QueryRow(ctx, orm.check).Scan(&got); err != nil {
						t.Fatal(err)
					}
					if got != orm.want {
						t.Fatalf("transaction %d: %s gives %q; want %q", i, orm.check, got, orm.want)
					}
				}
			})
		}
	}
}

// runORMStatement sends s the way its driver does and reads every row.
func runORMStatement(ctx context.Context, conn *pgx.Conn, s ormStatement) error {
	if s.via == simple {
		_, err := conn.PgConn().Exec(ctx, s.sql).ReadAll()
		return err
	}
	args := append([]any{pgx.QueryExecModeExec}, s.args...)
	rows, err := conn.Query(ctx, s.sql, args...)
	if err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}
