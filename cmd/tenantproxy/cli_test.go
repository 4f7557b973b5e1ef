package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/migrations"
)

func TestMain(m *testing.M) { pgtest.RunMain(m) }

// cli runs one tenantproxy command line in-process and returns stdout.
func cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, _, err := cliOutputs(t, args...)
	return out, err
}

// cliOutputs runs one tenantproxy command line in-process and returns
// stdout and stderr, where progress goes.
func cliOutputs(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append(args, "--log-level", "warn"), &out, &errOut)
	return out.String(), errOut.String(), err
}

// chatDir is the chat's migrations, the directory an operator serving
// the chat passes to migrate up --dir.
const chatDir = "../../chatapi/migrations"

// migrateChat migrates the catalog TENANTPROXY_CATALOG_DSN names with the
// chat as its app, as an operator would, so that the tenants created
// afterwards get the chat's tables.
func migrateChat(t *testing.T) string {
	t.Helper()
	return mustCLI(t, "migrate", "up", "--dir", chatDir)
}

// storedApp lists the app versions the catalog at dsn stores, as
// "version:checksum" lines.
func storedApp(t *testing.T, dsn string) string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var out string
	if err := conn.QueryRow(context.Background(),
		"SELECT coalesce(string_agg(version || ':' || checksum, E'\n' ORDER BY version), '') FROM app_migrations").Scan(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// dirApp is storedApp's listing of the migrations directory dir.
func dirApp(t *testing.T, dir string) string {
	t.Helper()
	ms, err := migrations.ReadAppDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	lines := make([]string, len(ms))
	for i, m := range ms {
		lines[i] = fmt.Sprintf("%d:%s", m.Version, m.Checksum)
	}
	return strings.Join(lines, "\n")
}

func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := cli(t, args...)
	if err != nil {
		t.Fatalf("tenantproxy %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func TestAdminCommandsEndToEnd(t *testing.T) {
	dsn := pgtest.NewDatabase(t, pgtest.Shared(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)

	if out := mustCLI(t, "migrate", "up"); !strings.Contains(out, "0 failed") {
		t.Fatalf("migrate up: %q", out)
	}
	if out := mustCLI(t, "backend", "list"); !strings.Contains(out, "main") || !strings.Contains(out, "tenantproxy_serving") {
		t.Fatalf("backend list after the first migrate up lacks backend main: %q", out)
	}

	out := mustCLI(t, "tenant", "create", "globex", "--name", "Globex", "--plan", "standard", "-o", "json")
	var created catalog.Created
	if err := json.Unmarshal([]byte(out), &created); err != nil {
		t.Fatalf("tenant create -o json: %v in %q", err, out)
	}
	if created.Tenant.Tier != catalog.TierSchema || created.Password == "" {
		t.Fatalf("standard plan gave tier %q, password %q; want schema and a generated password", created.Tenant.Tier, created.Password)
	}
	mustCLI(t, "tenant", "create", "acme", "--plan", "free", "--admin-password", "correct-horse")

	if _, err := cli(t, "tenant", "create", "Bad_Name"); err == nil {
		t.Fatal("tenant create accepted an uppercase subdomain")
	}

	var tenants []catalog.Tenant
	if err := json.Unmarshal([]byte(mustCLI(t, "tenant", "list", "--output", "json")), &tenants); err != nil {
		t.Fatal(err)
	}
	if len(tenants) != 2 {
		t.Fatalf("tenant list has %d tenants, want 2: %+v", len(tenants), tenants)
	}
	table := mustCLI(t, "tenant", "list")
	if !strings.HasPrefix(table, "ID") || !strings.Contains(table, "globex") || !strings.Contains(table, "acme") {
		t.Fatalf("tenant list table: %q", table)
	}

	mustCLI(t, "tenant", "suspend", "acme")
	if show := mustCLI(t, "tenant", "show", "acme"); !strings.Contains(show, "suspended") {
		t.Fatalf("show after suspend: %q", show)
	}
	mustCLI(t, "tenant", "resume", "acme")

	if _, err := cli(t, "tenant", "delete", "globex"); err == nil {
		t.Fatal("delete without --confirm went ahead")
	}
	mustCLI(t, "tenant", "delete", "globex", "--confirm", "globex")
	if _, err := cli(t, "tenant", "show", "globex"); err == nil {
		t.Fatal("deleted tenant still shown")
	}

	status := mustCLI(t, "migrate", "status")
	if !strings.Contains(status, "up to date") || strings.Contains(status, "pending") {
		t.Fatalf("migrate status after up: %q", status)
	}
}

// TestBenchRefusesUnknownScenario checks the wiring of bench's flags
// without starting anything; test/bench_test.go runs a real --quick.
func TestBenchRefusesUnknownScenario(t *testing.T) {
	_, err := cli(t, "bench", "--scenarios", "z", "--out", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), `unknown scenario "z"`) {
		t.Fatalf("bench --scenarios z: %v, want an unknown-scenario error", err)
	}
}

func TestVersion(t *testing.T) {
	if out := mustCLI(t, "version"); !strings.HasPrefix(out, "tenantproxy ") {
		t.Fatalf("version printed %q", out)
	}
}
