package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
	"github.com/tenantproxy/tenantproxy/test"
)

// todosDir is the second app of the tests: todos, tags and the todo_tags
// join, two versions with downs, written as for a database of its own.
const todosDir = "../../test/testdata/todos"

const appPassword = "correct-horse-battery"

// appTenants are created after migrate up --dir; earlyTenants before it.
var (
	appTenants = []struct{ sub, tier string }{
		{"acme", "shared"}, {"globex", "shared"}, {"initech", "schema"}, {"umbrella", "database"},
	}
	earlyTenants = []struct{ sub, tier string }{
		{"early-shared", "shared"}, {"early-schema", "schema"}, {"early-db", "database"},
	}
)

// TestAppMigrationsEndToEnd takes the todos app through the CLI alone:
// migrate up --dir brings existing tenants of all three tiers along, tenant
// create gives later ones the stored schema, each tenant sees only its rows
// through the proxy (unique titles and ids per tenant in the shared tier),
// the same with psql, a login added by tenant user add runs pgbench -i and
// DDL in the database tier until passwd and remove lock it out, migrate
// down --to 1 removes version 2 everywhere, status shows a target
// rolled back by hand, a changed stored version is refused, and a migration
// the shared tier refuses fails only the shared target.
func TestAppMigrationsEndToEnd(t *testing.T) {
	// A private cluster: the serving role and the shared database are the
	// server's, and this test migrates them.
	dsn := pgtest.NewDatabase(t, pgtest.StartT(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	mustCLI(t, "migrate", "up")
	for _, tt := range earlyTenants {
		mustCLI(t, "tenant", "create", tt.sub, "--isolation", tt.tier, "--admin-password", appPassword)
	}

	out, progress, err := cliOutputs(t, "migrate", "up", "--dir", todosDir)
	if err != nil || !strings.Contains(out, "0 failed (2 new app migrations stored)") {
		t.Fatalf("migrate up --dir: %v, %q", err, out)
	}
	// The shared database and the early schema and database tenants.
	if n := strings.Count(progress, "app: applied 2, now at version 2"); n != 3 {
		t.Fatalf("migrate up --dir progress has %d targets at app version 2, want 3:\n%s", n, progress)
	}
	for _, tt := range appTenants {
		mustCLI(t, "tenant", "create", tt.sub, "--isolation", tt.tier, "--admin-password", appPassword)
	}

	addr := startAppProxy(t, dsn)
	all := append(append([]struct{ sub, tier string }{}, earlyTenants...), appTenants...)
	for _, tt := range all {
		t.Run("rows/"+tt.sub, func(t *testing.T) { useTodos(t, proxyConn(t, addr, tt.sub), tt.sub) })
	}
	t.Run("psql and tenant users", func(t *testing.T) { psqlTodos(t, addr) })

	status := appStatus(t)
	for _, r := range status.Results[1:] {
		if r.App == nil || r.App.Version != 2 || r.App.Drifted() {
			t.Fatalf("status after up: %s has app %+v, want version 2 without drift", r.Target, r.App)
		}
	}

	out = mustCLI(t, "migrate", "down", "--to", "1")
	if !strings.Contains(out, "0 failed, 1 versions removed from the catalog") {
		t.Fatalf("migrate down --to 1: %q", out)
	}
	for _, tt := range all {
		var tags, todos bool
		if err := proxyConn(t, addr, tt.sub).QueryRow(context.Background(),
			"SELECT to_regclass('tags') IS NOT NULL, (SELECT count(*) = 2 FROM todos)").Scan(&tags, &todos); err != nil || tags || !todos {
			t.Fatalf("%s after down --to 1: tags exists %v, todos kept %v, err %v", tt.sub, tags, todos, err)
		}
	}
	for _, r := range appStatus(t).Results[1:] {
		if r.App.Version != 1 || r.App.Latest != 1 || r.App.Drifted() {
			t.Fatalf("status after down: %s has app %+v, want version 1 of 1", r.Target, r.App)
		}
	}

	if out := mustCLI(t, "migrate", "up", "--dir", todosDir); !strings.Contains(out, "(1 new app migrations stored)") {
		t.Fatalf("migrate up --dir after down: %q", out)
	}
	t.Run("drift", func(t *testing.T) { driftByHand(t, dsn, addr) })
	t.Run("changed version refused", func(t *testing.T) { changedVersionRefused(t) })
	t.Run("shared tier refusal", func(t *testing.T) { sharedRefusal(t) })
}

// useTodos writes and reads the todos app as tenant sub: its first ids are
// 1 whatever other tenants inserted, "buy milk" is unique within the tenant
// only, a tag can only join the tenant's own todos, and it sees its rows
// alone.
func useTodos(t *testing.T, conn *pgx.Conn, sub string) {
	ctx := context.Background()
	var todo, tag int64
	if err := conn.QueryRow(ctx, "INSERT INTO todos (title) VALUES ('buy milk') RETURNING id").Scan(&todo); err != nil || todo != 1 {
		t.Fatalf("first todo: id %d, %v; want id 1", todo, err)
	}
	if err := conn.QueryRow(ctx, "INSERT INTO tags (name) VALUES ('home') RETURNING id").Scan(&tag); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO todo_tags (todo_id, tag_id) VALUES ($1, $2)", todo, tag); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO todos (title) VALUES ($1)", sub); err != nil {
		t.Fatal(err)
	}
	_, err := conn.Exec(ctx, "INSERT INTO todos (title) VALUES ('buy milk')")
	if code := sqlstate(err); code != "23505" {
		t.Fatalf("a second 'buy milk' in one tenant: %v, want 23505", err)
	}
	_, err = conn.Exec(ctx, "INSERT INTO todo_tags (todo_id, tag_id) VALUES (999, $1)", tag)
	if code := sqlstate(err); code != "23503" {
		t.Fatalf("a tag on a todo the tenant lacks: %v, want 23503", err)
	}
	var titles string
	var joins int
	if err := conn.QueryRow(ctx, `SELECT (SELECT string_agg(title, ',' ORDER BY title) FROM todos),
		(SELECT count(*) FROM todo_tags JOIN todos ON todos.id = todo_id JOIN tags ON tags.id = tag_id)`).Scan(&titles, &joins); err != nil {
		t.Fatal(err)
	}
	want := []string{"buy milk", sub}
	sort.Strings(want)
	if titles != strings.Join(want, ",") || joins != 1 {
		t.Fatalf("tenant %s sees titles %q and %d tagged todos, want its own two and one", sub, titles, joins)
	}
}

// driftByHand rolls the schema-tier tenant back from version 2 by hand and
// gives the database-tier tenant a version the stored set lacks: status
// names both, migrate up repairs the first, and migrate down stops at the
// second without removing anything from the catalog.
func driftByHand(t *testing.T, dsn, addr string) {
	ctx := context.Background()
	initech := showTenant(t, "initech")
	admin := adminConn(t, dsn, initech.Database)
	schema := pgx.Identifier{initech.SchemaName}.Sanitize()
	if _, err := admin.Exec(ctx, "DROP TABLE "+schema+".todo_tags, "+schema+".tags; DELETE FROM "+
		pgx.Identifier{migrations.ProxySchema, initech.SchemaName + "_app_schema_migrations"}.Sanitize()+" WHERE version = 2"); err != nil {
		t.Fatal(err)
	}
	umbrella := adminConn(t, dsn, showTenant(t, "umbrella").Database)
	if _, err := umbrella.Exec(ctx, "INSERT INTO "+migrations.DatabaseProxySchema+".app_schema_migrations (version, name, checksum) VALUES (7, 'by_hand', 'x')"); err != nil {
		t.Fatal(err)
	}
	text := mustCLI(t, "migrate", "status")
	for _, want := range []string{"tenant initech", "behind: lacks 2", "drift: has 7, not in the stored set"} {
		if !strings.Contains(text, want) {
			t.Fatalf("migrate status lacks %q:\n%s", want, text)
		}
	}
	for _, r := range appStatus(t).Results[1:] {
		drift := r.Target.Tenant == "initech" || r.Target.Tenant == "umbrella"
		if r.App.Drifted() != drift {
			t.Fatalf("status: %s drifted %v (%s), want %v", r.Target, r.App.Drifted(), r.App.State(), drift)
		}
	}

	_, progress, err := cliOutputs(t, "migrate", "up")
	if err != nil || !strings.Contains(progress, "tenant initech (schema") || !strings.Contains(progress, "app: applied 1, now at version 2") {
		t.Fatalf("migrate up after the hand rollback: %v\n%s", err, progress)
	}
	if _, err := proxyConn(t, addr, "initech").Exec(ctx, "SELECT FROM tags JOIN todo_tags ON tag_id = id"); err != nil {
		t.Fatalf("initech after migrate up: %v", err)
	}

	out, err := cli(t, "migrate", "down", "--to", "1")
	if err == nil || !strings.Contains(err.Error(), "app version 7 is applied here but not stored") || !strings.Contains(out, "1 failed, 0 versions removed") {
		t.Fatalf("migrate down over an unknown version: %v, %q", err, out)
	}
	if _, err := umbrella.Exec(ctx, "DELETE FROM "+migrations.DatabaseProxySchema+".app_schema_migrations WHERE version = 7"); err != nil {
		t.Fatal(err)
	}
	// The other targets are down already; the rerun completes umbrella and
	// only then drops version 2 from the catalog.
	if out := mustCLI(t, "migrate", "down", "--to", "1"); !strings.Contains(out, "0 failed, 1 versions removed") {
		t.Fatalf("migrate down rerun: %q", out)
	}
	mustCLI(t, "migrate", "up", "--dir", todosDir)
}

// changedVersionRefused: a directory whose version 2 differs from the
// stored one is refused, naming the version, and stores nothing.
func changedVersionRefused(t *testing.T) {
	dir := appDir(t, map[string]string{
		"0002_tags.up.sql": "CREATE TABLE tags (id bigint PRIMARY KEY);",
		"0003_x.up.sql":    "CREATE TABLE x (id bigint PRIMARY KEY);",
	})
	_, err := cli(t, "migrate", "up", "--dir", dir)
	var changed *migrations.AppChangedError
	if !errors.As(err, &changed) || changed.Version != 2 || !strings.Contains(err.Error(), "0002_tags") {
		t.Fatalf("migrate up with an edited version 2: %v, want an AppChangedError naming 0002_tags", err)
	}
	if latest := appStatus(t).Results[1].App.Latest; latest != 2 {
		t.Fatalf("after the refusal the catalog's latest app version is %d, want 2", latest)
	}
}

// sharedRefusal: a version the shared tier cannot make safe fails the
// shared target alone, naming the statement and why; the schema and
// database tenants get it. Its down file is wrong: migrate down --to 2
// fails on those targets and keeps the version stored, and with the fixed
// file given by --dir it completes.
func sharedRefusal(t *testing.T) {
	dir := appDir(t, map[string]string{
		"0003_counts.up.sql":   "CREATE MATERIALIZED VIEW todo_counts AS SELECT count(*) FROM todos;",
		"0003_counts.down.sql": "DROP VIEW todo_counts;",
	})
	out, progress, err := cliOutputs(t, "migrate", "up", "--dir", dir)
	if err == nil || !strings.Contains(out, "1 failed") {
		t.Fatalf("migrate up with a materialized view: %v, %q", err, out)
	}
	var sharedLine string
	for _, line := range strings.Split(progress, "\n") {
		if strings.Contains(line, "shared main/") {
			sharedLine = line
		}
	}
	if !strings.Contains(sharedLine, "FAILED") || !strings.Contains(sharedLine, "0003_counts refused for the shared tier") ||
		!strings.Contains(sharedLine, "CREATE MATERIALIZED VIEW todo_counts") {
		t.Fatalf("the shared target's progress line: %q\n%s", sharedLine, progress)
	}
	for _, r := range appStatus(t).Results[1:] {
		want := 3
		if r.Target.Kind == migrations.KindShared {
			want = 2
		}
		if r.App.Version != want {
			t.Fatalf("%s at app version %d, want %d", r.Target, r.App.Version, want)
		}
	}
	// A shared-tier tenant could not get the stored schema: its create
	// fails with the refusal and is rolled back.
	if _, err := cli(t, "tenant", "create", "hooli", "--isolation", "shared"); err == nil ||
		!strings.Contains(err.Error(), "rolled back") || !strings.Contains(err.Error(), "materialized views cannot have row-level security") {
		t.Fatalf("shared-tier tenant create while 0003 is refused there: %v", err)
	}
	out, err = cli(t, "migrate", "down", "--to", "2")
	// "todo_counts" is not a view (42809) on the four schema and database
	// tenants; the shared target has nothing to revert.
	if err == nil || !strings.Contains(out, "4 failed, 0 versions removed") || !strings.Contains(err.Error(), "0003_counts down") {
		t.Fatalf("migrate down --to 2 with a wrong down file: %v, %q", err, out)
	}
	fixed := appDir(t, map[string]string{
		"0003_counts.up.sql":   "CREATE MATERIALIZED VIEW todo_counts AS SELECT count(*) FROM todos;",
		"0003_counts.down.sql": "DROP MATERIALIZED VIEW todo_counts;",
		"0004_new.up.sql":      "CREATE TABLE not_stored_by_down (id int);",
	})
	if out := mustCLI(t, "migrate", "down", "--to", "2", "--dir", fixed); !strings.Contains(out, "0 failed, 1 versions removed") {
		t.Fatalf("migrate down --to 2 --dir with the fixed down file: %q", out)
	}
	for _, r := range appStatus(t).Results[1:] {
		if r.App.Version != 2 || r.App.Latest != 2 || r.App.Drifted() {
			t.Fatalf("after down --to 2: %s has app %+v", r.Target, r.App)
		}
	}
	mustCLI(t, "tenant", "create", "hooli", "--isolation", "shared")
}

// appDir is the todos directory with files added or replaced.
func appDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir(todosDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(todosDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for name, sql := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(sql), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func appStatus(t *testing.T) migrations.Report {
	t.Helper()
	var rep migrations.Report
	if err := json.Unmarshal([]byte(mustCLI(t, "migrate", "status", "-o", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) < 2 {
		t.Fatalf("migrate status lists %d targets", len(rep.Results))
	}
	return rep
}

func showTenant(t *testing.T, sub string) catalog.Tenant {
	t.Helper()
	var tenant catalog.Tenant
	if err := json.Unmarshal([]byte(mustCLI(t, "tenant", "show", sub, "-o", "json")), &tenant); err != nil {
		t.Fatal(err)
	}
	return tenant
}

// startAppProxy serves the catalog at dsn on a proxy of the test's own.
func startAppProxy(t *testing.T, dsn string) string {
	t.Helper()
	cat, err := catalog.Open(context.Background(), dsn, catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	mgr, err := pool.NewManager(pool.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	_, addr := test.StartProxy(t, proxy.Config{}, cat, mgr)
	return addr
}

// proxyConn logs in through the proxy as tenant sub's admin.
func proxyConn(t *testing.T, addr, sub string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, proxyURL(addr, "admin."+sub, appPassword))
	if err != nil {
		t.Fatalf("connect as %s: %v", sub, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// adminConn connects to database on the catalog's server as its superuser.
func adminConn(t *testing.T, dsn, database string) *pgx.Conn {
	t.Helper()
	conn, err := migrations.ConnectAs(context.Background(), dsn, database)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestAppMigrationsHundredTenants migrates the todos app into 100 existing
// tenants (30 shared, 60 schema, 10 database), timed, and back down: every
// target gets both versions, each tenant's rows stay its own, and down
// leaves nothing of the app. The timings are logged (go test -v), not
// asserted.
func TestAppMigrationsHundredTenants(t *testing.T) {
	if testing.Short() {
		t.Skip("provisions 100 tenants")
	}
	dsn := pgtest.NewDatabase(t, pgtest.StartT(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	mustCLI(t, "migrate", "up")
	ctx := context.Background()
	cat, err := catalog.Open(ctx, dsn, catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	tiers := map[catalog.Tier]int{catalog.TierShared: 30, catalog.TierSchema: 60, catalog.TierDatabase: 10}
	start := time.Now()
	for tier, n := range tiers {
		for i := range n {
			sub := fmt.Sprintf("%s-%02d", tier, i)
			if _, err := cat.Create(ctx, catalog.CreateRequest{Subdomain: sub, Plan: catalog.PlanFree, Tier: tier, AdminPassword: appPassword}); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("100 tenants provisioned in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	out, progress, err := cliOutputs(t, "migrate", "up", "--dir", todosDir)
	up := time.Since(start)
	if err != nil {
		t.Fatalf("migrate up --dir: %v\n%s", err, progress)
	}
	// The shared database, 60 schemas and 10 databases.
	if n := strings.Count(progress, "app: applied 2, now at version 2"); n != 71 {
		t.Fatalf("%d targets got both app versions, want 71:\n%s", n, progress)
	}
	t.Logf("migrate up --dir over 71 targets (100 tenants): %s (%s)", up.Round(time.Millisecond), strings.TrimSpace(out))

	addr := startAppProxy(t, dsn)
	for _, sub := range []string{"shared-00", "shared-01", "schema-00", "database-00"} {
		useTodos(t, proxyConn(t, addr, sub), sub)
	}

	start = time.Now()
	out = mustCLI(t, "migrate", "down", "--to", "0")
	t.Logf("migrate down --to 0 over 71 targets: %s (%s)", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	for _, r := range appStatus(t).Results[1:] {
		if r.App.Version != 0 || r.App.Latest != 0 || r.App.Drifted() {
			t.Fatalf("after down --to 0: %s has app %+v", r.Target, r.App)
		}
	}
	var todos bool
	if err := proxyConn(t, addr, "schema-00").QueryRow(ctx, "SELECT to_regclass('todos') IS NOT NULL").Scan(&todos); err != nil || todos {
		t.Fatalf("schema-00 after down --to 0: todos exists %v, %v", todos, err)
	}
}

// TestDeletingASharedTierTenantFollowsTheAppsForeignKeys: an app's foreign
// keys need not cascade; deleting a shared-tier tenant removes its rows
// children first, whatever the tables' names (alphabetical order deleted
// the referenced table first and failed with 23503).
func TestDeletingASharedTierTenantFollowsTheAppsForeignKeys(t *testing.T) {
	dsn := pgtest.NewDatabase(t, pgtest.StartT(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	mustCLI(t, "migrate", "up")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "0001_orders.up.sql"), []byte(
		"CREATE TABLE a_customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);\n"+
			"CREATE TABLE b_orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer bigint NOT NULL REFERENCES a_customers (id));\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, "migrate", "up", "--dir", dir)
	mustCLI(t, "tenant", "create", "shop", "--plan", "free", "--admin-password", appPassword)
	ctx := context.Background()
	cat, err := catalog.Open(ctx, dsn, catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	tn, err := cat.TenantBySubdomain(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	b, err := cat.Backend(ctx, tn.Backend)
	if err != nil {
		t.Fatal(err)
	}
	shared, err := migrations.ConnectAs(ctx, b.AdminDSN, tn.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close(ctx)
	err = pgx.BeginFunc(ctx, shared, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config($1, $2, true)", migrations.TenantGUC, tn.ID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "WITH c AS (INSERT INTO a_customers (name) VALUES ('ann') RETURNING id) INSERT INTO b_orders (customer) SELECT id FROM c")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	mustCLI(t, "tenant", "delete", "shop", "--confirm", "shop")
	var left int
	if err := shared.QueryRow(ctx, "SELECT (SELECT count(*) FROM a_customers) + (SELECT count(*) FROM b_orders)").Scan(&left); err != nil || left != 0 {
		t.Fatalf("rows left after the delete: %d, %v", left, err)
	}
}
