package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
)

// psqlTodos takes the todos app, after useTodos wrote each tenant's rows
// with pgx, through the real psql binary (ON_ERROR_STOP=1), and a login
// added with tenant user add through psql, pgbench and pgx, until tenant
// user passwd and remove lock it out.
func psqlTodos(t *testing.T, addr string) {
	for _, tt := range appTenants {
		// The same unique title in every tenant, both shared-tier ones
		// included: uniqueness is per tenant.
		out, err := psql(addr, "admin."+tt.sub, appPassword,
			"INSERT INTO todos (title) VALUES ('written by psql')",
			"SELECT string_agg(title, ',' ORDER BY title) FROM todos")
		want := []string{"buy milk", tt.sub, "written by psql"}
		sort.Strings(want)
		if err != nil || lastLine(out) != strings.Join(want, ",") {
			t.Fatalf("psql as %s: %v; sees %q, want its own %q", tt.sub, err, lastLine(out), strings.Join(want, ","))
		}
	}
	out, err := psql(addr, "admin.acme", appPassword, "INSERT INTO todos (title) VALUES ('written by psql')")
	if err == nil || !strings.Contains(out, "duplicate key value violates unique constraint") {
		t.Fatalf("a second 'written by psql' in acme: %v, %q; want psql to stop on a unique violation", err, out)
	}
	for _, tt := range appTenants {
		// The rest of the test counts the rows useTodos wrote.
		if out, err := psql(addr, "admin."+tt.sub, appPassword, "DELETE FROM todos WHERE title = 'written by psql'"); err != nil || !strings.Contains(out, "DELETE 1") {
			t.Fatalf("psql as %s deleting its row: %v, %q", tt.sub, err, out)
		}
	}

	// A login of the database-tier tenant of its own: pgbench -i and DDL.
	mustCLI(t, "tenant", "user", "add", "umbrella", "bob", "--password", "bobs-first-password")
	if out, err := runTool("pgbench", "-i", "-s", "1", proxyURL(addr, "bob.umbrella", "bobs-first-password")); err != nil {
		t.Fatalf("pgbench -i as bob.umbrella: %v\n%s", err, out)
	}
	out, err = psql(addr, "bob.umbrella", "bobs-first-password",
		"CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL)",
		"INSERT INTO notes (body) VALUES ('one')",
		"SELECT (SELECT count(*) FROM pgbench_accounts) || '/' || (SELECT count(*) FROM notes)")
	if err != nil || lastLine(out) != "100000/1" {
		t.Fatalf("psql as bob.umbrella: %v, %q; want 100000 pgbench accounts and 1 note", err, out)
	}

	mustCLI(t, "tenant", "user", "passwd", "umbrella", "bob", "--password", "bobs-second-password")
	eventually(t, "the old password after passwd", func() string {
		return loginRefused(addr, "bob", "bobs-first-password")
	})
	if out, err := psql(addr, "bob.umbrella", "bobs-second-password", "SELECT count(*) FROM notes"); err != nil || lastLine(out) != "1" {
		t.Fatalf("psql with the new password: %v, %q", err, out)
	}

	mustCLI(t, "tenant", "user", "remove", "umbrella", "bob")
	eventually(t, "a removed user", func() string {
		return loginRefused(addr, "bob", "bobs-second-password")
	})
}

// loginRefused reports "" when user of tenant umbrella cannot log in to
// addr with password, through psql nor pgx, and the proxy says 28P01.
func loginRefused(addr, user, password string) string {
	out, err := psql(addr, user+".umbrella", password, "SELECT 1")
	if err == nil || !strings.Contains(out, "password authentication failed") {
		return fmt.Sprintf("psql as %s: %v, %q; want password authentication failed", user, err, out)
	}
	conn, err := loginTenant(addr, "umbrella", user, password, "")
	if err == nil {
		conn.Close(context.Background())
		return "pgx login as " + user + " succeeded; want 28P01"
	}
	if got := sqlstate(err); got != "28P01" {
		return fmt.Sprintf("pgx login as %s: %v; want 28P01", user, err)
	}
	return ""
}

// psql runs the psql binary as user through the proxy at addr, one -c per
// statement, stopping at the first error, and returns its stdout and
// stderr together.
func psql(addr, user, password string, statements ...string) (string, error) {
	args := []string{"-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", proxyURL(addr, user, password)}
	for _, s := range statements {
		args = append(args, "-c", s)
	}
	return runTool("psql", args...)
}

// runTool runs PostgreSQL's client program name with args and returns its
// stdout and stderr together.
func runTool(name string, args ...string) (string, error) {
	bin, err := pgcluster.Tool(name)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// proxyURL is a libpq URL for user at the proxy at addr.
func proxyURL(addr, user, password string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("postgres://%s:%s@%s:%s/app?sslmode=disable", user, password, host, port)
}

func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}
