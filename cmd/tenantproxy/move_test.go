package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// TestMoveCommands moves a tenant with tenant update --plan, backend
// drain and tenant move --keep-source, and lists the backends' load.
func TestMoveCommands(t *testing.T) {
	main := pgtest.StartT(t)
	t.Setenv("TENANTPROXY_CATALOG_DSN", pgtest.NewDatabase(t, main))
	migrateChat(t)
	mustCLI(t, "tenant", "create", "acme", "--plan", "free", "--admin-password", flagsPassword)
	shared, err := pgx.Connect(context.Background(), main.DSN(shownMoved(t, "acme").Database))
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close(context.Background())
	if _, err := shared.Exec(context.Background(), "SET app.tenant_id = 'acme'; INSERT INTO users (username) SELECT 'u' || i FROM generate_series(1, 50) i"); err != nil {
		t.Fatal(err)
	}

	if out := mustCLI(t, "tenant", "update", "acme", "--plan", "pro"); !strings.Contains(out, "moved: shared tier on main") {
		t.Fatalf("update --plan pro: %s", out)
	}
	if tn := shownMoved(t, "acme"); tn.Tier != "schema" {
		t.Fatalf("after update --plan pro the tenant is in the %s tier", tn.Tier)
	}
	if out := mustCLI(t, "tenant", "update", "acme", "--plan", "free", "--no-move"); strings.Contains(out, "moved") || shownMoved(t, "acme").Tier != "schema" {
		t.Fatalf("update --no-move moved the tenant: %s", out)
	}

	east := pgtest.StartT(t)
	mustCLI(t, "backend", "add", "east", "--dsn", east.DSN("postgres"))
	if out := mustCLI(t, "backend", "list"); !strings.Contains(out, "FREE") || !strings.Contains(out, "(region)") {
		t.Fatalf("backend list: %s", out)
	}
	if out := mustCLI(t, "backend", "drain", "main"); !strings.Contains(out, "1 tenants moved") {
		t.Fatalf("backend drain main: %s", out)
	}
	tn := shownMoved(t, "acme")
	if tn.Backend != "east" {
		t.Fatalf("after draining main the tenant is on %s", tn.Backend)
	}
	var n int
	if err := pgxQueryRow(t, east.DSN(tn.Database), "SELECT count(*) FROM "+pgx.Identifier{tn.Schema, "users"}.Sanitize(), &n); err != nil || n != 50 {
		t.Fatalf("rows on east after the drain: %d, %v", n, err)
	}

	if out := mustCLI(t, "tenant", "move", "acme", "--tier", "database", "--keep-source", "1h"); !strings.Contains(out, "kept until") {
		t.Fatalf("move --keep-source: %s", out)
	}
	if err := pgxQueryRow(t, east.DSN(tn.Database), "SELECT count(*) FROM "+pgx.Identifier{tn.Schema, "users"}.Sanitize(), &n); err != nil || n != 50 {
		t.Fatalf("the kept source: %d rows, %v", n, err)
	}
	mustCLI(t, "tenant", "move", "acme", "--keep-source", "0")
	if err := pgxQueryRow(t, east.DSN(tn.Database), "SELECT count(*) FROM pg_namespace WHERE nspname = $1", &n, tn.Schema); err != nil || n != 0 {
		t.Fatalf("the source after the grace period: %d schemas, %v", n, err)
	}
}

type shownTenant struct {
	Tier     string `json:"isolation_level"`
	Backend  string `json:"backend"`
	Database string `json:"database"`
	Schema   string `json:"schema_name"`
}

func shownMoved(t *testing.T, sub string) shownTenant {
	t.Helper()
	var tn shownTenant
	if err := json.Unmarshal([]byte(mustCLI(t, "tenant", "show", sub, "-o", "json")), &tn); err != nil {
		t.Fatal(err)
	}
	return tn
}

func pgxQueryRow(t *testing.T, dsn, q string, dst any, args ...any) error {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(context.Background(), q, args...).Scan(dst)
}
