package test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestStartupParametersAsPostgreSQL: the same startup packet gives the
// same settings, or the same error, directly and through the proxy in
// both pool modes: startup parameters win over "-c" options (PostgreSQL
// applies the options first), an explicitly empty application_name stays
// empty, no application_name at all is empty too, as reported to the
// client at start-up and as set (it was the pool's "tenantproxy"), and a
// parameter PostgreSQL does not know fails with its 42704.
func TestStartupParametersAsPostgreSQL(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	direct := e.cluster.DSN("postgres")
	sep := "?"
	if strings.Contains(direct, "?") {
		sep = "&"
	}
	connStrings := map[string]func(params ...string) string{
		"direct": func(params ...string) string { return direct + sep + strings.Join(params, "&") },
	}
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		_, addr := e.startProxy(t, proxy.Config{PoolMode: mode})
		connStrings[mode] = func(params ...string) string { return dsn(addr, "alice.acme", tenantPassword, params...) }
	}
	// outcome is the settings' values, or the error's severity, SQLSTATE
	// and message.
	outcome := func(t *testing.T, connString string) string {
		conn, err := pgx.Connect(ctx, connString)
		if err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) {
				return pe.Severity + " " + pe.Code + " " + pe.Message
			}
			t.Fatalf("connect: %v", err)
		}
		defer conn.Close(ctx)
		var app, dateStyle string
		if err := conn.QueryRow(ctx, "SELECT '[' || current_setting('application_name') || ']', current_setting('DateStyle')").Scan(&app, &dateStyle); err != nil {
			t.Fatal(err)
		}
		return app + " " + dateStyle + " reported [" + conn.PgConn().ParameterStatus("application_name") + "]"
	}
	for _, tt := range []struct {
		name   string
		params []string
	}{
		{"parameter over option", []string{"application_name=param", "options=-c%20application_name%3Doption%20-c%20DateStyle%3DGerman", "DateStyle=SQL,%20DMY"}},
		{"empty application_name", []string{"application_name="}},
		{"no application_name", nil},
		{"application_name as an option", []string{"options=-c%20application_name%3Doption"}},
		{"unknown parameter", []string{"no_such_setting=1"}},
		{"unknown option", []string{"options=-c%20no_such_setting%3D1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			want := outcome(t, connStrings["direct"](tt.params...))
			for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
				if got := outcome(t, connStrings[mode](tt.params...)); got != want {
					t.Errorf("%s mode: %q; directly: %q", mode, got, want)
				}
			}
		})
	}
}

// TestKnownSettingsListMatchesTheServer: policy/pgsettings15.txt, the
// names the proxy treats as PostgreSQL's settings, holds every setting the
// server under test lists, so no real setting is answered as unknown.
func TestKnownSettingsListMatchesTheServer(t *testing.T) {
	e := newProxyEnv(t)
	raw, err := os.ReadFile("../policy/pgsettings15.txt")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, name := range strings.Fields(string(raw)) {
		known[name] = true
	}
	conn := connect(t, e.cluster.DSN("postgres"))
	rows, err := conn.Query(ctxT(t), "SELECT lower(name) FROM pg_settings WHERE name NOT LIKE '%.%'")
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if !known[name] {
			t.Errorf("setting %s is missing from policy/pgsettings15.txt", name)
		}
	}
}

// TestDatabaseNameIsCheckedWhenConfigured: with Config.Database set, the
// database a client names must be that one; another gets PostgreSQL's
// FATAL 3D000 with a hint, after authentication (a wrong password still
// hears 28P01 first), in both pool modes.
func TestDatabaseNameIsCheckedWhenConfigured(t *testing.T) {
	e := newProxyEnv(t)
	ctx := ctxT(t)
	for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(mode, func(t *testing.T) {
			_, addr := e.startProxy(t, proxy.Config{PoolMode: mode, Database: "chat"})
			withDatabase := func(user, password, db string) string {
				return strings.Replace(dsn(addr, user, password), "/app?", "/"+db+"?", 1)
			}
			conn := connect(t, withDatabase("alice.acme", tenantPassword, "chat"))
			var n int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
				t.Fatal(err)
			}
			_, err := pgx.Connect(ctx, withDatabase("alice.acme", tenantPassword, "app"))
			pe := &pgconn.PgError{}
			if !errors.As(err, &pe) || pe.Severity != "FATAL" || pe.Code != "3D000" || pe.Message != `database "app" does not exist` || !strings.Contains(pe.Hint, `"chat"`) {
				t.Fatalf("database app: %v (hint %q); want FATAL 3D000 with a hint naming chat", err, pe.Hint)
			}
			_, err = pgx.Connect(ctx, withDatabase("alice.acme", "wrong-password", "app"))
			if !errors.As(err, &pe) || pe.Code != "28P01" {
				t.Fatalf("wrong password and database app: %v; want 28P01 first", err)
			}
		})
	}
}
