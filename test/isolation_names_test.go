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

// TestIsolationRoleSettingsAreHidden: a database-tier tenant's role is its
// own, and PostgreSQL lets a role store settings of its own (ALTER ROLE …
// SET, as PostgREST keeps its configuration), but roles are the server's:
// through pg_roles.rolconfig, pg_user.useconfig or pg_db_role_setting
// every other tenant would read them. They are hidden in every tier and
// mode, directly too, while the columns psql's \du reads stay readable.
// pg_db_role_setting's stand-ins show a shared- or schema-tier tenant
// nothing, and a database-tier tenant its own database's and role's
// settings only: not another tenant's database's or role's, not even
// another role's in its own database.
func TestIsolationRoleSettingsAreHidden(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	tn, err := e.cat.Show(ctx, "umbrella")
	if err != nil {
		t.Fatal(err)
	}
	owner := connect(t, e.tenantLoginDSN(t, "umbrella", tn.Database))
	if _, err := owner.Exec(ctx, "ALTER ROLE CURRENT_USER SET application_name = 'umbrella-secret-key'"); err != nil {
		t.Fatalf("the tenant storing a setting of its own role: %v", err)
	}
	others, err := e.cat.Show(ctx, "initech")
	if err != nil {
		t.Fatal(err)
	}
	for db, sql := range map[string]string{
		others.Database: `ALTER DATABASE "` + others.Database + `" SET application_name = 'schema-db-secret'`,
		tn.Database:     `ALTER ROLE "` + others.SchemaName + `" IN DATABASE "` + tn.Database + `" SET application_name = 'initech-in-umbrella-secret'`,
		"postgres":      `ALTER ROLE "` + others.SchemaName + `" SET application_name = 'initech-role-secret'`,
	} {
		if err := e.cluster.Exec(ctx, db, sql); err != nil {
			t.Fatal(err)
		}
	}
	addrs := e.proxiesByMode(t)
	for mode, addr := range addrs {
		for _, sub := range []string{"acme", "initech", "umbrella"} {
			conn := connect(t, dsn(addr, "alice."+sub, tenantPassword))
			var settings string
			if err := conn.QueryRow(ctx, "SELECT coalesce(string_agg(setconfig::text, ','), '') FROM pg_db_role_setting").Scan(&settings); err != nil {
				t.Errorf("%s/%s: reading pg_db_role_setting: %v", mode, sub, err)
			} else if want := map[string]string{"umbrella": "{application_name=umbrella-secret-key}"}[sub]; settings != want {
				t.Errorf("%s/%s: pg_db_role_setting shows %q; want %q (the tenant's own role's only)", mode, sub, settings, want)
			}
			for _, sql := range []string{
				"SELECT rolconfig::text FROM pg_roles WHERE rolconfig IS NOT NULL",
				"SELECT useconfig::text FROM pg_user WHERE useconfig IS NOT NULL",
				"SELECT r::text FROM pg_roles r",
			} {
				var got string
				err := conn.QueryRow(ctx, sql).Scan(&got)
				if sqlstateOf(err) != "42501" {
					t.Errorf("%s/%s: %s gave %q, %v; want 42501", mode, sub, sql, got, err)
				}
			}
			var n int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname IS NOT NULL AND NOT rolsuper AND rolcanlogin IN (true, false)").Scan(&n); err != nil || n == 0 {
				t.Errorf("%s/%s: the columns \\du reads: %d roles, %v", mode, sub, n, err)
			}
		}
	}
	// Directly, as the serving role in the shared database (procedural
	// code runs there with its rights, out of the policy's sight).
	b, err := e.cat.Backend(ctx, tn.Backend)
	if err != nil {
		t.Fatal(err)
	}
	direct := connect(t, e.directDSN(b.ServingUser, b.ServingPassword, b.SharedDatabase))
	for _, sql := range []string{"SELECT setconfig::text FROM pg_db_role_setting", "SELECT rolconfig::text FROM pg_roles WHERE rolconfig IS NOT NULL"} {
		var got string
		if err := direct.QueryRow(ctx, sql).Scan(&got); sqlstateOf(err) != "42501" {
			t.Errorf("serving role, directly: %s gave %q, %v; want 42501", sql, got, err)
		}
	}
}
