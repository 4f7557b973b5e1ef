package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// listener is a connection through the proxy that records the
// notifications it receives.
type listener struct {
	conn  *pgconn.PgConn
	notes []*pgconn.Notification
}

// listenerIn connects as tenant sub through the proxy of pooling mode mode.
func (e *isolationEnv) listenerIn(t *testing.T, mode, sub string) *listener {
	t.Helper()
	cfg, err := pgconn.ParseConfig(dsn(e.addrs[mode], "alice."+sub, tenantPassword))
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{}
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { l.notes = append(l.notes, n) }
	if l.conn, err = pgconn.ConnectConfig(ctxT(t), cfg); err != nil {
		t.Fatalf("connect as %s: %v", sub, err)
	}
	t.Cleanup(func() { l.conn.Close(context.Background()) })
	return l
}

// marked sends a notification of marker on channel jobs from l's own
// session and waits for it: notifications reach a listener in commit
// order, so whatever else l was to receive before it has come by then.
// It returns what l received since the last call, marker included.
func (l *listener) marked(t *testing.T, proto, marker string) []string {
	t.Helper()
	if _, err := runAttack(t, l.conn, proto, "NOTIFY jobs, '"+marker+"'"); err != nil {
		t.Fatalf("NOTIFY jobs, %q: %v", marker, err)
	}
	ctx, cancel := context.WithTimeout(ctxT(t), 10*time.Second)
	defer cancel()
	for len(l.notes) == 0 || l.notes[len(l.notes)-1].Payload != marker {
		if err := l.conn.WaitForNotification(ctx); err != nil {
			t.Fatalf("waiting for %q: %v; received %v", marker, err, notesText(l.notes))
		}
	}
	got := notesText(l.notes)
	l.notes = nil
	return got
}

// notesText lists notifications as channel=payload.
func notesText(notes []*pgconn.Notification) []string {
	var out []string
	for _, n := range notes {
		out = append(out, n.Channel+"="+n.Payload)
	}
	return out
}

func expectNotes(t *testing.T, who string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("%s received %q; want %q", who, got, want)
	}
}

// TestIsolationLocksAndChannelsPerTenant: advisory lock keys and
// LISTEN/NOTIFY channels are one space per database in PostgreSQL; through
// the proxy each tenant has its own in every tier: another tenant's lock
// 42 or channel jobs is invisible, while the tenant's own sessions share
// them as in PostgreSQL. Both protocols, both pool modes where the
// statement is allowed (LISTEN and session locks outlive the
// transaction, so transaction mode refuses them until the pinning work).
func TestIsolationLocksAndChannelsPerTenant(t *testing.T) {
	e := newIsolationEnv(t)
	ctx := ctxT(t)
	for _, p := range isolationPairs {
		a, b := p.victim, p.attacker
		for _, proto := range []string{"simple", "extended"} {
			t.Run(string(p.tier)+"/"+proto+"/session locks", func(t *testing.T) {
				a1, a2, b1 := e.pgconn(t, a), e.pgconn(t, a), e.pgconn(t, b)
				for _, key := range []string{"42", "4, 2"} {
					mustRun(t, a1, proto, "SELECT pg_advisory_lock("+key+")")
					expectRow(t, a2, proto, "SELECT pg_try_advisory_lock("+key+")", "f", a+"'s second session took "+a+"'s lock "+key)
					expectRow(t, b1, proto, "SELECT pg_try_advisory_lock("+key+")", "t", b+" could not take its own lock "+key+" while "+a+" holds its")
					expectRow(t, b1, proto, "SELECT pg_advisory_unlock("+key+")", "t", b+" released its lock "+key)
					expectRow(t, a1, proto, "SELECT pg_advisory_unlock("+key+")", "t", a+" released its lock "+key)
					expectRow(t, a2, proto, "SELECT pg_try_advisory_lock("+key+")", "t", a+"'s second session took the released lock "+key)
					mustRun(t, a2, proto, "SELECT pg_advisory_unlock_all()")
				}
			})
			t.Run(string(p.tier)+"/"+proto+"/transaction locks in transaction mode", func(t *testing.T) {
				const mode = proxy.PoolTransaction
				a1, a2, b1 := e.pgconnIn(t, mode, a), e.pgconnIn(t, mode, a), e.pgconnIn(t, mode, b)
				mustRun(t, a1, "simple", "BEGIN")
				mustRun(t, a1, proto, "SELECT pg_advisory_xact_lock(42)")
				expectRow(t, a2, proto, "SELECT pg_try_advisory_xact_lock(42)", "f", a+"'s second session took "+a+"'s transaction lock")
				expectRow(t, b1, proto, "SELECT pg_try_advisory_xact_lock(42)", "t", b+" could not take its own transaction lock 42")
				mustRun(t, a1, "simple", "COMMIT")
				expectRow(t, a2, proto, "SELECT pg_try_advisory_xact_lock(42)", "t", a+"'s lock after its transaction ended")
			})
			t.Run(string(p.tier)+"/"+proto+"/channels", func(t *testing.T) {
				la, lb := e.listenerIn(t, proxy.PoolSession, a), e.listenerIn(t, proxy.PoolSession, b)
				mustRun(t, la.conn, proto, "LISTEN jobs")
				mustRun(t, lb.conn, proto, "LISTEN jobs")
				expectRow(t, la.conn, proto, "SELECT string_agg(c, ',') FROM pg_listening_channels() c", "jobs", a+"'s channels")
				for _, mode := range poolModes {
					n := e.pgconnIn(t, mode, a)
					mustRun(t, n, proto, "NOTIFY jobs, 'statement-"+mode+"'")
					mustRun(t, n, proto, "SELECT pg_notify('jobs', 'function-"+mode+"')")
				}
				expectNotes(t, a, la.marked(t, proto, "a-marker"),
					"jobs=statement-session", "jobs=function-session", "jobs=statement-transaction", "jobs=function-transaction", "jobs=a-marker")
				expectNotes(t, b, lb.marked(t, proto, "b-marker"), "jobs=b-marker")
				mustRun(t, la.conn, proto, "UNLISTEN jobs")
				mustRun(t, la.conn, proto, "LISTEN other")
				mustRun(t, e.pgconn(t, a), proto, "NOTIFY jobs, 'unheard'")
				mustRun(t, e.pgconn(t, a), proto, "NOTIFY other, 'heard'")
				mustRun(t, la.conn, proto, "LISTEN jobs")
				expectNotes(t, a, la.marked(t, proto, "a-marker"), "other=heard", "jobs=a-marker")
			})
		}
		if p.tier == catalog.TierDatabase {
			continue
		}
		t.Run(string(p.tier)+"/pg_notify in a trigger", func(t *testing.T) {
			schema, db := "public", migrations.SharedDatabase
			if p.tier == catalog.TierSchema {
				schema, db = pgx.Identifier{e.objectName(t, a)}.Sanitize(), migrations.SchemaDatabase
			}
			// What a job queue's migration installs: an unqualified
			// pg_notify in a trigger function. In the shared tier the
			// table and its trigger are every tenant's.
			if err := e.cluster.Exec(ctx, db, `CREATE FUNCTION `+schema+`.notify_job() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN PERFORM pg_notify('jobs', NEW.body); RETURN NEW; END $$;
				CREATE TRIGGER notify_job AFTER INSERT ON `+schema+`.messages FOR EACH ROW EXECUTE FUNCTION `+schema+`.notify_job()`); err != nil {
				t.Fatal(err)
			}
			la, lb := e.listenerIn(t, proxy.PoolSession, a), e.listenerIn(t, proxy.PoolSession, b)
			mustRun(t, la.conn, "simple", "LISTEN jobs")
			mustRun(t, lb.conn, "simple", "LISTEN jobs")
			for _, mode := range poolModes {
				mustRun(t, e.pgconnIn(t, mode, a), "simple", `INSERT INTO messages (channel_id, author_id, body)
					SELECT id, created_by, 'job-`+mode+`' FROM channels`)
			}
			expectNotes(t, a, la.marked(t, "simple", "a-marker"), "jobs=job-session", "jobs=job-transaction", "jobs=a-marker")
			expectNotes(t, b, lb.marked(t, "simple", "b-marker"), "jobs=b-marker")
		})
		t.Run(string(p.tier)+"/search_path given at connection start", func(t *testing.T) {
			a1 := e.pgconn(t, a)
			mustRun(t, a1, "simple", "SELECT pg_advisory_lock(7)")
			path := "public"
			if p.tier == catalog.TierSchema {
				path = e.objectName(t, a)
			}
			for _, mode := range poolModes {
				a2 := e.pgconnIn(t, mode, a, "options=-c%20search_path%3D"+path)
				expectRow(t, a2, "simple", "SELECT pg_try_advisory_xact_lock(7)", "f", a+"'s lock 7 from a session that set search_path at start ("+mode+" mode)")
				expectRow(t, e.pgconnIn(t, mode, b, "options=-c%20search_path%3Dpublic"), "simple", "SELECT pg_try_advisory_xact_lock(7)", "t",
					b+"'s own lock 7 from a session that set search_path at start ("+mode+" mode)")
			}
		})
		t.Run(string(p.tier)+"/no way into another tenant's space", func(t *testing.T) {
			la := e.listenerIn(t, proxy.PoolSession, a)
			mustRun(t, la.conn, "simple", "LISTEN jobs")
			mustRun(t, la.conn, "simple", "SELECT pg_advisory_lock(42)")
			prefix := e.channelPrefix(t, a)
			for _, mode := range poolModes {
				bc := e.pgconnIn(t, mode, b)
				for _, sql := range []string{
					"SELECT pg_catalog.pg_notify('jobs', 'x')",
					`SELECT "pg_catalog"."pg_notify"('jobs', 'x')`,
					`SELECT U&"pg\005fcatalog".pg_notify('jobs', 'x')`,
					"SELECT PG_CATALOG.PG_TRY_ADVISORY_XACT_LOCK(42)",
					"SELECT pg_catalog.pg_try_advisory_xact_lock(4, 2)",
					"SELECT * FROM pg_catalog.pg_listening_channels()",
					"SELECT * FROM pg_locks WHERE locktype = 'advisory'",
					"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'NOTIFY jobs'",
				} {
					if _, err := bc.Exec(ctx, sql).ReadAll(); sqlstateOf(err) != "42501" {
						t.Errorf("%s as %s in %s mode: %v; want 42501", sql, b, mode, err)
					}
				}
				for _, sql := range []string{
					// Guessing the prefix names a channel of b's own.
					`NOTIFY "` + prefix + `jobs", 'guessed'`,
					"SELECT pg_notify('" + prefix + "jobs', 'guessed')",
					`SELECT tenantproxy_ns.pg_notify('jobs', 'qualified')`,
					`NOTIFY U&"\006aobs", 'escaped'`,
					`NOTIFY "jobs", 'quoted'`,
				} {
					mustRun(t, bc, "simple", sql)
				}
				expectRow(t, bc, "simple", "SELECT pg_try_advisory_xact_lock(42)", "t", b+"'s own lock 42 while "+a+" holds its")
				expectRow(t, bc, "simple", "SELECT tenantproxy_ns.pg_try_advisory_xact_lock(42)", "t", b+"'s own lock 42, qualified")
			}
			expectNotes(t, a, la.marked(t, "simple", "a-marker"), "jobs=a-marker")
		})
	}
	t.Run("LISTEN in transaction mode", func(t *testing.T) {
		// LISTEN pins the client's server connection.
		for _, p := range isolationPairs[:2] {
			la, lb := e.listenerIn(t, proxy.PoolTransaction, p.victim), e.listenerIn(t, proxy.PoolTransaction, p.attacker)
			mustRun(t, la.conn, "simple", "LISTEN jobs")
			mustRun(t, lb.conn, "simple", "LISTEN jobs")
			mustRun(t, e.pgconnIn(t, proxy.PoolTransaction, p.victim), "simple", "NOTIFY jobs, 'tx'")
			expectNotes(t, p.victim, la.marked(t, "simple", "a-marker"), "jobs=tx", "jobs=a-marker")
			expectNotes(t, p.attacker, lb.marked(t, "simple", "b-marker"), "jobs=b-marker")
		}
	})
}

// channelPrefix is tenant sub's channel prefix on the server: what an
// attacker who knows the scheme and the tenant's names could compute.
func (e *proxyEnv) channelPrefix(t *testing.T, sub string) string {
	t.Helper()
	tn, err := e.cat.Show(ctxT(t), sub)
	if err != nil {
		t.Fatal(err)
	}
	if tn.Tier == catalog.TierSchema {
		return migrations.ChannelPrefix(migrations.SchemaNamespace(tn.SchemaName))
	}
	return migrations.ChannelPrefix(migrations.SharedNamespace(tn.ID))
}

func mustRun(t *testing.T, conn *pgconn.PgConn, proto, sql string) {
	t.Helper()
	if _, err := runAttack(t, conn, proto, sql); err != nil {
		t.Fatalf("%s (%s): %v", sql, proto, err)
	}
}

func expectRow(t *testing.T, conn *pgconn.PgConn, proto, sql, want, what string) {
	t.Helper()
	got, err := runAttack(t, conn, proto, sql)
	if err != nil || got != want {
		t.Errorf("%s: %s (%s) gave %q, %v; want %q", what, sql, proto, got, err, want)
	}
}
