package test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/migrations"
)

// TestIsolationSessionState: what one tenant leaves on a pooled server
// connection, or sends around the statement policy, never reaches another.
func TestIsolationSessionState(t *testing.T) {
	e := newIsolationEnv(t)
	ctx := ctxT(t)

	// Tenants of one tier share a pool (same server, database and login
	// role): the attacker's server connection is the next one the victim
	// gets.
	for _, p := range isolationPairs[:2] {
		t.Run("leftovers/"+string(p.tier), func(t *testing.T) {
			defaults := queryText(t, e.pgconn(t, p.victim), "SHOW statement_timeout; SHOW work_mem; SHOW application_name")
			a := e.pgconn(t, p.attacker)
			queryText(t, a, `SET statement_timeout = '4321s'; SET work_mem = '1GB'; SET application_name = 'mallory';
				SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;
				PREPARE leak AS SELECT body FROM messages;
				BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT body FROM messages; COMMIT`)
			a.Close(ctx)
			v := e.pgconn(t, p.victim)
			if got := queryText(t, v, "SHOW statement_timeout; SHOW work_mem; SHOW application_name"); got != defaults {
				t.Errorf("victim's settings %q after the attacker's session; want %q", got, defaults)
			}
			if got := queryText(t, v, "SHOW default_transaction_read_only"); got != "off" {
				t.Errorf("victim's default_transaction_read_only is %q; want off", got)
			}
			for sql, code := range map[string]string{"EXECUTE leak": "26000", "FETCH ALL FROM held": "34000"} {
				_, err := v.Exec(ctx, sql).ReadAll()
				if sqlstateOf(err) != code {
					t.Errorf("victim's %s: %v; want SQLSTATE %s (the attacker's object is gone)", sql, err, code)
				}
			}
			e.assertVictimUntouched(t, p.victim)
		})
	}

	t.Run("refused statement inside a transaction", func(t *testing.T) {
		for _, p := range isolationPairs {
			conn := e.pgconn(t, p.attacker)
			before := sessionContext(t, conn)
			// Split across messages and across the transaction boundary.
			queryText(t, conn, "BEGIN")
			if _, err := conn.Exec(ctx, "SET LOCAL ROLE "+e.victimRole).ReadAll(); sqlstateOf(err) != "42501" {
				t.Errorf("%s: SET LOCAL ROLE in a transaction: %v; want 42501", p.tier, err)
			}
			// The refusal failed the transaction, as a server error would.
			if _, err := conn.Exec(ctx, "SELECT string_agg(body, ',') FROM messages").ReadAll(); sqlstateOf(err) != "25P02" {
				t.Errorf("%s: a statement after the refusal: %v; want 25P02", p.tier, err)
			}
			queryText(t, conn, "ROLLBACK")
			if got := queryText(t, conn, "SELECT string_agg(body, ',') FROM messages"); got != "secret-of-"+p.attacker {
				t.Errorf("%s: after the refusal the attacker sees %q", p.tier, got)
			}
			queryText(t, conn, "BEGIN")
			if _, err := conn.Exec(ctx, "COMMIT; SET app.tenant_id = '"+p.victim+"'").ReadAll(); sqlstateOf(err) != "42501" {
				t.Errorf("%s: COMMIT; SET app.tenant_id: %v; want 42501 for the whole string", p.tier, err)
			}
			queryText(t, conn, "ROLLBACK")
			if got := sessionContext(t, conn); got != before {
				t.Errorf("%s: context %q; was %q", p.tier, got, before)
			}
		}
	})

	t.Run("extended protocol: refused Parse, then the batch goes on", func(t *testing.T) {
		for _, p := range isolationPairs {
			conn := e.pgconn(t, p.attacker)
			batch := &pgconn.Batch{}
			batch.ExecParams("SELECT current_user", nil, nil, nil, nil)
			batch.ExecParams("SELECT set_config('role', $1, false)", [][]byte{[]byte(e.victimRole)}, nil, nil, nil)
			batch.ExecParams("SELECT current_user", nil, nil, nil, nil)
			res, err := conn.ExecBatch(ctx, batch).ReadAll()
			if sqlstateOf(err) != "42501" {
				t.Errorf("%s: batch with set_config: %v; want 42501", p.tier, err)
			}
			if strings.Contains(resultText(res), e.victimRole) {
				t.Errorf("%s: batch ran as the victim's role: %q", p.tier, resultText(res))
			}
			if got := queryText(t, conn, "SELECT current_user"); got == e.victimRole {
				t.Errorf("%s: after the batch current_user is %q", p.tier, got)
			}
		}
	})

	t.Run("startup settings", func(t *testing.T) {
		for _, p := range isolationPairs {
			for _, opt := range []string{"role=" + e.victimRole, "app.tenant_id=" + p.victim, "session_authorization=postgres", "standard_conforming_strings=off"} {
				conn, err := pgconn.Connect(ctx, dsn(e.addr, "alice."+p.attacker, tenantPassword, "options=-c%20"+strings.ReplaceAll(opt, "=", "%3D")))
				if err == nil {
					conn.Close(ctx)
				}
				if sqlstateOf(err) != "42501" {
					t.Errorf("%s: connecting with -c %s: %v; want 42501", p.tier, opt, err)
				}
			}
			// search_path is a permitted startup setting; pointing it at
			// the victim's schema reaches nothing: PostgreSQL skips schemas
			// the role has no USAGE on.
			conn := e.pgconn(t, p.attacker, "options=-c%20search_path%3Dtenant_"+p.victim)
			_, err := conn.Exec(ctx, "SELECT body FROM messages").ReadAll()
			if sqlstateOf(err) != "42P01" {
				t.Errorf("%s: SELECT with search_path on the victim's schema: %v; want 42P01", p.tier, err)
			}
		}
	})

	t.Run("multi-byte client encoding cannot hide a statement", func(t *testing.T) {
		// In SJIS, 0x95 0x5C is one character: the server sees the string
		// end after it, a UTF-8 reader sees an escaped quote.
		for _, p := range isolationPairs {
			conn, err := pgconn.Connect(ctx, dsn(e.addr, "alice."+p.attacker, tenantPassword, "client_encoding=SJIS"))
			if err != nil {
				if sqlstateOf(err) != "42501" {
					t.Errorf("%s: client_encoding=SJIS refused with %v; want 42501", p.tier, err)
				}
				continue
			}
			_, err = conn.Exec(ctx, "SELECT E'\x95\\' ; SET ROLE "+e.victimRole+"; SELECT 1 --'").ReadAll()
			got := queryText(t, conn, "SELECT current_user")
			conn.Close(ctx)
			if got == e.victimRole {
				t.Errorf("%s: the smuggled SET ROLE ran (err %v)", p.tier, err)
			}
		}
	})

	t.Run("database tier: advisory locks and channels are per database", func(t *testing.T) {
		a, v := e.pgconn(t, "umbrella"), e.pgconn(t, "stark")
		queryText(t, a, "SELECT pg_advisory_lock(42); LISTEN events")
		if got := queryText(t, v, "SELECT pg_try_advisory_lock(42)"); got != "t" {
			t.Errorf("the victim could not take advisory lock 42 the attacker holds in its own database: %q", got)
		}
		queryText(t, v, "NOTIFY events, 'secret-of-stark'")
		wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		if err := a.WaitForNotification(wctx); err == nil {
			t.Errorf("the attacker received a notification from the victim's database")
		}
	})

	t.Run("cancel-key guessing", func(t *testing.T) {
		v := e.pgconn(t, "globex")
		pid := v.PID()
		done := make(chan error, 1)
		go func() {
			_, err := v.Exec(context.Background(), "SELECT pg_sleep(1)").ReadAll()
			done <- err
		}()
		time.Sleep(100 * time.Millisecond)
		// The victim's own pid with random keys, and random pids.
		for i := range 200 {
			var b [8]byte
			rand.Read(b[:])
			p := binary.BigEndian.Uint32(b[:4])
			if i%2 == 0 {
				p = pid
			}
			sendCancel(t, e.addr, p, b[4:])
		}
		if err := <-done; err != nil {
			t.Errorf("victim's query: %v; want it to finish uncancelled", err)
		}
	})
}

// sendCancel sends one CancelRequest to the proxy at addr.
func sendCancel(t *testing.T, addr string, pid uint32, key []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := binary.BigEndian.AppendUint32(nil, 16)
	msg = binary.BigEndian.AppendUint32(msg, 80877102)
	msg = binary.BigEndian.AppendUint32(msg, pid)
	msg = append(msg, key...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	// The proxy closes the connection when done; wait for it so the
	// request has been handled before the next one.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Read(make([]byte, 1))
}

// TestIsolationDirectConnections: the database hardening stands without
// the proxy. Connected directly as the serving role, or as a tenant role,
// nothing of another tenant is reachable without first changing the
// context (which the proxy's policy refuses), and the side channels are
// closed by privileges, not only by the policy.
func TestIsolationDirectConnections(t *testing.T) {
	e := newIsolationEnv(t)
	ctx := ctxT(t)
	b, err := e.cat.Backend(ctx, migrations.MainBackend)
	if err != nil {
		t.Fatal(err)
	}
	tryAs := func(t *testing.T, user, password, database string) (*pgconn.PgConn, error) {
		t.Helper()
		cfg, err := pgconn.ParseConfig(b.AdminDSN)
		if err != nil {
			t.Fatal(err)
		}
		if user != "" {
			cfg.User, cfg.Password = user, password
		}
		cfg.Database = database
		conn, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("connect as %s to %s: %w", cfg.User, database, err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn, nil
	}
	as := func(t *testing.T, user, password, database string) *pgconn.PgConn {
		t.Helper()
		conn, err := tryAs(t, user, password, database)
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	expectErr := func(t *testing.T, conn *pgconn.PgConn, sql, code string) {
		t.Helper()
		_, err := conn.Exec(ctx, sql).ReadAll()
		if sqlstateOf(err) != code {
			t.Errorf("%s: %v; want SQLSTATE %s", sql, err, code)
		}
	}

	t.Run("serving role attributes", func(t *testing.T) {
		admin := as(t, "", "", migrations.SharedDatabase)
		got := queryText(t, admin, `SELECT rolsuper::text || rolbypassrls::text || rolcreaterole::text || rolcreatedb::text || rolinherit::text
			FROM pg_roles WHERE rolname = '`+b.ServingUser+`'`)
		if got != "falsefalsefalsefalsefalse" {
			t.Errorf("serving role super/bypassrls/createrole/createdb/inherit = %s; want all false", got)
		}
		if strings.Contains(b.AdminDSN, "user="+b.ServingUser) {
			t.Errorf("the admin DSN logs in as the serving role")
		}
	})

	t.Run("shared database as the serving role", func(t *testing.T) {
		s := as(t, b.ServingUser, b.ServingPassword, migrations.SharedDatabase)
		if got := queryText(t, s, "SELECT count(*) FROM messages"); got != "0" {
			t.Errorf("without the tenant setting the serving role sees %s messages; want 0 (fail closed)", got)
		}
		if got := queryText(t, s, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = 'public' AND c.relkind = 'r' AND NOT (c.relrowsecurity AND c.relforcerowsecurity)`); got != "0" {
			t.Errorf("%s shared tables without forced RLS", got)
		}
		expectErr(t, s, "CREATE TABLE public.planted (x int)", "42501")
		// TEMP here alone, for the staging table of the shared tier's
		// COPY FROM STDIN (migrations.Harden); the policy refuses tenants'
		// own temporary objects in the tier.
		if got := queryText(t, s, "SELECT has_database_privilege(current_database(), 'TEMP')::text"); got != "true" {
			t.Errorf("serving role TEMP on the shared database = %s; want true", got)
		}
		expectErr(t, s, "SELECT query FROM pg_stat_activity", "42501")
		expectErr(t, s, "SELECT * FROM pg_stat_get_activity(NULL)", "42501")
		expectErr(t, s, "SELECT * FROM pg_locks", "42501")
		expectErr(t, s, "SELECT most_common_vals::text FROM pg_stats", "42501")
		expectErr(t, s, "SELECT n_live_tup FROM pg_stat_user_tables", "42501")
		expectErr(t, s, "SELECT pg_total_relation_size('messages')", "42501")
		expectErr(t, s, "SELECT reltuples FROM pg_class WHERE relname = 'messages'", "42501")
		expectErr(t, s, "SELECT pg_advisory_lock(1)", "42501")
		expectErr(t, s, "SELECT pg_notify('x', 'y')", "42501")
		// The tenants' own lock and channel functions need a tenant
		// context: without one there is no namespace to share.
		expectErr(t, s, "SELECT tenantproxy_ns.pg_advisory_lock(1)", "42501")
		expectErr(t, s, "SELECT tenantproxy_ns.pg_notify('x', 'y')", "42501")
		expectErr(t, s, "SELECT pg_terminate_backend(pg_backend_pid())", "42501")
		expectErr(t, s, "TRUNCATE messages", "42501")
		expectErr(t, s, "UPDATE pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding'", "42501")
		expectErr(t, s, "ALTER TABLE messages NO FORCE ROW LEVEL SECURITY", "42501")
	})

	t.Run("schema database as the serving role and as a tenant role", func(t *testing.T) {
		s := as(t, b.ServingUser, b.ServingPassword, migrations.SchemaDatabase)
		wayne, initech := pgx.Identifier{e.victimRole}.Sanitize(), pgx.Identifier{e.objectName(t, "initech")}.Sanitize()
		// NOINHERIT: membership alone reaches no tenant's schema.
		expectErr(t, s, "SELECT body FROM "+wayne+".messages", "42501")
		expectErr(t, s, "SELECT body FROM "+initech+".messages", "42501")
		expectErr(t, s, "CREATE TABLE public.planted (x int)", "42501")
		expectErr(t, s, "CREATE TEMP TABLE planted (x int)", "42501")
		expectErr(t, s, "SELECT query FROM pg_stat_activity", "42501")
		expectErr(t, s, "SELECT pg_advisory_lock(1)", "42501")
		expectErr(t, s, "SELECT tenantproxy_ns.pg_try_advisory_lock(1, 2)", "42501")
		expectErr(t, s, "SELECT relname FROM pg_stat_user_tables", "42501")
		// The planner's estimates of another schema's tables count their
		// rows; every other column of pg_class stays readable for psql.
		expectErr(t, s, "SELECT relpages FROM pg_class WHERE relname = 'messages'", "42501")
		queryText(t, s, "SELECT count(relname) FROM pg_class WHERE relname = 'messages'")

		// As tenant initech's role: its own schema only.
		queryText(t, s, "SET ROLE "+initech)
		if got := queryText(t, s, "SELECT string_agg(body, ',') FROM "+initech+".messages"); got != "secret-of-initech" {
			t.Errorf("tenant role sees %q in its own schema", got)
		}
		expectErr(t, s, "SELECT body FROM "+wayne+".messages", "42501")
		expectErr(t, s, "INSERT INTO "+wayne+".users (username) VALUES ('mallory')", "42501")
		expectErr(t, s, "CREATE TABLE "+wayne+".planted (x int)", "42501")
		expectErr(t, s, "GRANT "+wayne+" TO "+initech, "42501")
		expectErr(t, s, "ALTER ROLE "+wayne+" NOLOGIN", "42501")
		got := queryText(t, s, "SELECT has_schema_privilege('"+e.victimRole+"', 'USAGE')::text || has_schema_privilege('public', 'CREATE')::text")
		if got != "falsefalse" {
			t.Errorf("tenant role: USAGE on another tenant's schema, CREATE on public = %s; want false false", got)
		}
	})

	t.Run("tenant database as its own login role", func(t *testing.T) {
		umbrella, err := e.cat.Show(ctx, "umbrella")
		if err != nil {
			t.Fatal(err)
		}
		s := as(t, umbrella.LoginRole(), umbrella.LoginPassword, umbrella.Database)
		expectErr(t, s, "SELECT query FROM pg_stat_activity", "42501")
		expectErr(t, s, "SELECT pg_cancel_backend(pg_backend_pid())", "42501")
		expectErr(t, s, "SELECT * FROM pg_stats", "42501")
		// Its role is its own and changes no other.
		expectErr(t, s, "ALTER ROLE "+b.ServingUser+" SET search_path = evil", "42501")
		expectErr(t, s, "ALTER ROLE "+e.objectName(t, "stark")+" SET search_path = evil", "42501")
		expectErr(t, s, "GRANT pg_read_all_stats TO CURRENT_USER", "42501")
		// Alone in its database, the tenant keeps its own statistics.
		queryText(t, s, "SELECT count(*) FROM pg_stat_user_tables")

		// It may connect to its own database only, and the serving role no
		// longer to it.
		for _, db := range []string{e.objectName(t, "stark"), migrations.SharedDatabase, migrations.SchemaDatabase} {
			if _, err := tryAs(t, umbrella.LoginRole(), umbrella.LoginPassword, db); sqlstateOf(err) != "42501" {
				t.Errorf("umbrella's role connecting to %s: %v; want SQLSTATE 42501", db, err)
			}
		}
		if _, err := tryAs(t, b.ServingUser, b.ServingPassword, umbrella.Database); sqlstateOf(err) != "42501" {
			t.Errorf("serving role connecting to umbrella's database: %v; want SQLSTATE 42501", err)
		}
	})
}
