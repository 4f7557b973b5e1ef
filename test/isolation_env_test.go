package test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// isolationPair is an attacker and a victim of one tier: the attacker has
// valid credentials of its own tenant and tries to reach the victim's.
type isolationPair struct {
	tier             catalog.Tier
	attacker, victim string
}

var isolationPairs = []isolationPair{
	{catalog.TierShared, "acme", "globex"},
	{catalog.TierSchema, "initech", "wayne"},
	{catalog.TierDatabase, "umbrella", "stark"},
}

// isolationEnv is proxyEnv plus a victim in the schema and database tiers
// and a planted secret in every tenant, with one proxy per pooling mode.
type isolationEnv struct {
	*proxyEnv
	// victimRole is the role the serving role is a member of that is most
	// worth stealing: a schema-tier tenant's (wayne's). Every tier's
	// attacker goes for it.
	victimRole string
	// addr serves in session mode, addrs by mode.
	addr  string
	addrs map[string]string
}

// poolModes are the proxy's pooling modes; every attack runs in each.
var poolModes = []string{proxy.PoolSession, proxy.PoolTransaction}

func newIsolationEnv(t *testing.T) *isolationEnv {
	t.Helper()
	e := newProxyEnv(t)
	ctx := ctxT(t)
	for _, v := range []struct {
		sub, plan string
	}{{"wayne", catalog.PlanStandard}, {"stark", catalog.PlanEnterprise}} {
		if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: v.sub, Plan: v.plan, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
			t.Fatalf("create %s: %v", v.sub, err)
		}
	}
	ie := &isolationEnv{proxyEnv: e, addrs: map[string]string{}}
	ie.victimRole = e.objectName(t, "wayne")
	for _, mode := range poolModes {
		_, ie.addrs[mode] = e.startProxy(t, proxy.Config{PoolMode: mode})
	}
	ie.addr = ie.addrs[proxy.PoolSession]
	for _, p := range isolationPairs {
		for _, sub := range []string{p.attacker, p.victim} {
			conn := ie.pgconn(t, sub)
			_, err := conn.Exec(ctx, `WITH u AS (INSERT INTO users (username) VALUES ('u-`+sub+`') RETURNING id),
				c AS (INSERT INTO channels (name, created_by) SELECT 'general', id FROM u RETURNING id, created_by)
				INSERT INTO messages (channel_id, author_id, body) SELECT id, created_by, 'secret-of-`+sub+`' FROM c`).ReadAll()
			if err != nil {
				t.Fatalf("planting %s's secret: %v", sub, err)
			}
		}
	}
	return ie
}

// pgconn connects through the session-mode proxy as tenant sub's admin
// user.
func (e *isolationEnv) pgconn(t *testing.T, sub string, extra ...string) *pgconn.PgConn {
	t.Helper()
	return e.pgconnIn(t, proxy.PoolSession, sub, extra...)
}

// pgconnIn connects through the proxy of pooling mode mode.
func (e *isolationEnv) pgconnIn(t *testing.T, mode, sub string, extra ...string) *pgconn.PgConn {
	t.Helper()
	conn, err := pgconn.Connect(ctxT(t), dsn(e.addrs[mode], "alice."+sub, tenantPassword, extra...))
	if err != nil {
		t.Fatalf("connect as %s: %v", sub, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// assertVictimUntouched checks, through the proxy as the victim, that its
// data is exactly what was planted.
func (e *isolationEnv) assertVictimUntouched(t *testing.T, victim string) {
	t.Helper()
	got := queryText(t, e.pgconn(t, victim), `SELECT (SELECT string_agg(body, ',') FROM messages) || '|' ||
		(SELECT string_agg(username, ',') FROM users) || '|' || (SELECT count(*) FROM channels)`)
	if want := "secret-of-" + victim + "|u-" + victim + "|1"; got != want {
		t.Errorf("victim %s's data is %q; want %q", victim, got, want)
	}
}

// queryText runs sql (simple protocol) and returns its rows' text joined
// by ",", failing t on error.
func queryText(t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	res, err := conn.Exec(ctxT(t), sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return resultText(res)
}

func resultText(res []*pgconn.Result) string {
	var out []string
	for _, r := range res {
		for _, row := range r.Rows {
			for _, v := range row {
				out = append(out, string(v))
			}
		}
	}
	return strings.Join(out, ",")
}

// context is what the proxy set up for a session; an attack must leave it
// as it was.
func sessionContext(t *testing.T, conn *pgconn.PgConn) string {
	t.Helper()
	return queryText(t, conn, "SELECT current_user || '|' || coalesce(current_setting('app.tenant_id', true), '') || '|' || current_setting('search_path')")
}
