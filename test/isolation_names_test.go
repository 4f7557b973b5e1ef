package test

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// nameListings are the ways a tenant reads the names of roles, schemas and
// databases its backend holds: the catalogs themselves, and the casts and
// functions that print names whatever the proxy refuses to list.
var nameListings = []struct{ name, sql string }{
	{"pg_roles", "SELECT string_agg(rolname, ',') FROM pg_roles"},
	{"pg_database", "SELECT string_agg(datname, ',') FROM pg_database"},
	{"pg_namespace", "SELECT string_agg(nspname, ',') FROM pg_namespace"},
	{"pg_auth_members through regrole", "SELECT string_agg(roleid::regrole || '>' || member::regrole, ',') FROM pg_auth_members"},
	{"regnamespace and regrole casts", "SELECT string_agg(DISTINCT relnamespace::regnamespace || '/' || relowner::regrole, ',') FROM pg_class"},
	{"pg_describe_object of shared dependencies", "SELECT string_agg(pg_describe_object(refclassid, refobjid, 0), ',') FROM pg_shdepend"},
	{"pg_tablespace_databases", "SELECT string_agg(pg_describe_object('pg_database'::regclass, d, 0), ',') FROM pg_tablespace_databases(1663) d"},
	{"has_database_privilege over every database", "SELECT string_agg(datname || '=' || has_database_privilege(oid, 'CONNECT'), ',') FROM pg_database"},
}

// opaqueName is the shape of the object names the catalog draws at random
// (catalog.NewObjectName).
var opaqueName = regexp.MustCompile(`^tenant_[a-z2-7]{16}$`)

// namesEnv is the isolation environment with what it takes to check that a
// text names no tenant: every tenant's subdomain, and the object names the
// catalog drew at random, which say nothing.
type namesEnv struct {
	*isolationEnv
	subdomains []string
	opaque     *strings.Replacer
}

func newNamesEnv(t *testing.T) *namesEnv {
	t.Helper()
	e := &namesEnv{isolationEnv: newIsolationEnv(t)}
	var names []string
	for _, p := range isolationPairs {
		for _, sub := range []string{p.attacker, p.victim} {
			e.subdomains = append(e.subdomains, sub)
			// A random name could hold a subdomain by chance; a name made
			// of one is what the test is after, so it stays.
			if n := e.objectName(t, sub); p.tier != catalog.TierShared && opaqueName.MatchString(n) {
				names = append(names, n, "<opaque>")
			}
		}
	}
	e.opaque = strings.NewReplacer(names...)
	return e
}

// checkNamesNoTenant fails if text, once the catalog's opaque names are
// taken out, holds any tenant's subdomain.
func (e *namesEnv) checkNamesNoTenant(t *testing.T, what, text string) {
	t.Helper()
	rest := e.opaque.Replace(text)
	for _, sub := range e.subdomains {
		if strings.Contains(rest, sub) {
			t.Errorf("%s names tenant %s: %q", what, sub, text)
		}
	}
}

// guessedNames asks whether roles and schemas exist under names derived
// from every tenant's subdomain, as they were before names were random.
func (e *namesEnv) guessedNames() string {
	var calls []string
	for _, sub := range e.subdomains {
		calls = append(calls, "to_regrole('tenant_"+sub+"')", "to_regnamespace('tenant_"+sub+"')")
	}
	return "SELECT concat_ws(',', " + strings.Join(calls, ", ") + ")"
}

// TestIsolationNamesRevealNoTenant: whatever lists roles, schemas and
// databases, or prints them through casts and functions, shows a tenant of
// any tier no other tenant's subdomain, in both pooling modes and both
// protocols; and listing is allowed, as psql needs it.
func TestIsolationNamesRevealNoTenant(t *testing.T) {
	e := newNamesEnv(t)
	listings := append(nameListings, struct{ name, sql string }{"to_regrole and to_regnamespace of names guessed from subdomains", e.guessedNames()})
	for _, p := range isolationPairs {
		for _, mode := range poolModes {
			for _, proto := range []string{"simple", "extended"} {
				t.Run(string(p.tier)+"/"+mode+"/"+proto, func(t *testing.T) {
					conn := e.pgconnIn(t, mode, p.attacker)
					for _, l := range listings {
						text, err := runAttack(t, conn, proto, l.sql)
						if err != nil {
							t.Errorf("%s: %v; want it to run: names reveal nothing", l.name, err)
							continue
						}
						e.checkNamesNoTenant(t, l.name, text)
					}
				})
			}
		}
	}
}

// TestIsolationPsqlDescribesThroughTheProxy: psql's \du, \l, \dt and \d,
// which read pg_roles, pg_auth_members, pg_database and pg_statistic_ext,
// work for a tenant of every tier in both pooling modes, and name no tenant.
func TestIsolationPsqlDescribesThroughTheProxy(t *testing.T) {
	e := newNamesEnv(t)
	psql := clientTool(t, "psql")
	for _, p := range isolationPairs {
		for _, mode := range poolModes {
			t.Run(string(p.tier)+"/"+mode, func(t *testing.T) {
				out, err := runErr(psql, dsn(e.addrs[mode], "alice."+p.attacker, tenantPassword), "-X", "-v", "ON_ERROR_STOP=1",
					"-c", `\du`, "-c", `\l`, "-c", `\dt`, "-c", `\d messages`)
				if err != nil {
					t.Fatalf("psql \\du, \\l, \\dt, \\d messages: %v\n%s", err, out)
				}
				for _, want := range []string{"List of roles", "List of databases", "List of relations", `Table "`, "channel_id"} {
					if !strings.Contains(out, want) {
						t.Errorf("psql output lacks %q:\n%s", want, out)
					}
				}
				e.checkNamesNoTenant(t, "psql", out)
			})
		}
	}
}

// TestIsolationSharedKeysStayOutOfErrors: in the shared tier every key holds
// tenant_id, a subdomain; PostgreSQL leaves key values out of a constraint
// error on a table with row-level security, so a violation names no tenant.
func TestIsolationSharedKeysStayOutOfErrors(t *testing.T) {
	e := newIsolationEnv(t)
	for _, mode := range poolModes {
		conn := e.pgconnIn(t, mode, "acme")
		for _, sql := range []string{
			"INSERT INTO users (username) VALUES ('u-acme')",
			"INSERT INTO channels (name, created_by) VALUES ('orphan', -1)",
		} {
			_, err := conn.Exec(ctxT(t), sql).ReadAll()
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code[:2] != "23" {
				t.Fatalf("%s: %s: %v; want a constraint violation", mode, sql, err)
			}
			if strings.Contains(pgErr.Detail, "tenant_id") || strings.Contains(pgErr.Detail, "acme") {
				t.Errorf("%s: %s: detail %q shows key values", mode, sql, pgErr.Detail)
			}
		}
	}
}
