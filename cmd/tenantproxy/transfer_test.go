package main

import (
	"archive/tar"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// fillTodos gives a todos database thousands of rows, then deletes every
// seventh todo, so that the highest id (3000) is above the row count: an
// id sequence set from the count would repeat ids.
const fillTodos = `
INSERT INTO todos (title, done, created_at)
	SELECT 'todo ' || i, i % 3 = 0, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute' FROM generate_series(1, 3000) i;
INSERT INTO tags (name) SELECT 'tag ' || i FROM generate_series(1, 40) i;
INSERT INTO todo_tags (todo_id, tag_id) SELECT id, id % 40 + 1 FROM todos;
INSERT INTO todo_tags (todo_id, tag_id) SELECT id, (id + 7) % 40 + 1 FROM todos WHERE id % 2 = 0;
DELETE FROM todos WHERE id % 7 = 0;
`

// todosDigest sums up a tenant's todos app as its client sees it, in a
// form independent of the session's settings.
const todosDigest = `SELECT (SELECT count(*) FROM todos) + (SELECT count(*) FROM tags) + (SELECT count(*) FROM todo_tags),
	(SELECT md5(string_agg(id || '/' || title || '/' || done || '/' || extract(epoch FROM created_at), ',' ORDER BY id)) FROM todos) ||
	(SELECT md5(string_agg(id || '/' || name, ',' ORDER BY id)) FROM tags) ||
	(SELECT md5(string_agg(todo_id || '/' || tag_id, ',' ORDER BY todo_id, tag_id)) FROM todo_tags)`

// psqlRun runs SQL files and commands against dsn with plain psql, as a
// customer's own deployment would have been set up.
func psqlRun(t *testing.T, dsn string, args ...string) {
	t.Helper()
	psql, err := pgcluster.Tool("psql")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(psql, append([]string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
}

func digest(t *testing.T, conn *pgx.Conn) (int64, string) {
	t.Helper()
	var n int64
	var sum string
	if err := conn.QueryRow(context.Background(), todosDigest).Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	return n, sum
}

// TestTenantImportIntoEveryTier imports a todos database made by psql into
// a tenant of each tier: through the proxy each sees the source's rows
// exactly, and its next INSERT gets the id after the source's highest. A
// source with a table or a column type the app lacks is refused and leaves
// no tenant.
func TestTenantImportIntoEveryTier(t *testing.T) {
	cluster, dsn, src := todosSource(t)

	direct := adminConn(t, src, "")
	wantRows, wantSum := digest(t, direct)
	addr := startAppProxy(t, dsn)
	for _, tt := range []struct{ sub, plan, tier string }{
		{"acme", "free", "shared"}, {"initech", "standard", "schema"}, {"umbrella", "enterprise", "database"},
	} {
		t.Run(tt.tier, func(t *testing.T) {
			out, progress, err := cliOutputs(t, "tenant", "import", tt.sub, "--from", src, "--plan", tt.plan, "--admin-password", appPassword)
			if err != nil || !strings.Contains(out, "tier "+tt.tier) || !strings.Contains(progress, "table todo_tags: 3858 rows") {
				t.Fatalf("tenant import into the %s tier: %v\n%s\n%s", tt.tier, err, out, progress)
			}
			conn := proxyConn(t, addr, tt.sub)
			if n, sum := digest(t, conn); n != wantRows || sum != wantSum {
				t.Fatalf("%s through the proxy: %d rows, digest %s; the source has %d, %s", tt.sub, n, sum, wantRows, wantSum)
			}
			var id int64
			if err := conn.QueryRow(context.Background(), "INSERT INTO todos (title) VALUES ('after the import') RETURNING id").Scan(&id); err != nil || id != 3001 {
				t.Fatalf("first insert after the import: id %d, %v; want 3001", id, err)
			}
		})
	}

	for _, bad := range []struct{ name, sql, want string }{
		{"a table the app lacks", "CREATE TABLE invoices (id int PRIMARY KEY)", "invoices is not among the tenant's tables"},
		{"a column of another type", "ALTER TABLE todos ALTER COLUMN title TYPE varchar(200)",
			"column todos.title is character varying(200) in the source, text in the tenant's table"},
	} {
		db := pgtest.NewDatabase(t, cluster)
		psqlRun(t, db, "-f", filepath.Join(todosDir, "0001_todos.up.sql"), "-c", bad.sql+"; INSERT INTO todos (title) VALUES ('x')")
		if _, err := cli(t, "tenant", "import", "hooli", "--from", db, "--plan", "standard"); err == nil ||
			!strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), "rolled back") {
			t.Fatalf("import of %s: %v, want %q, rolled back", bad.name, err, bad.want)
		}
		if _, err := cli(t, "tenant", "show", "hooli"); err == nil {
			t.Fatalf("a refused import (%s) left its tenant behind", bad.name)
		}
	}
}

// readManifest reads an export's manifest.json.
func readManifest(t *testing.T, path string) catalog.Manifest {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	if h, err := tr.Next(); err != nil || h.Name != "manifest.json" {
		t.Fatalf("export's first entry: %v, %v", h, err)
	}
	var m catalog.Manifest
	if err := json.NewDecoder(tr).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestTenantExportDeleteImportRoundTrip exports a shared-tier tenant with
// the todos app's tables, deletes it (which the audit log
// records, with its row counts), imports the export under the same name
// and into the database tier, and exports again: every table's count and
// checksum are equal, and ids continue.
func TestTenantExportDeleteImportRoundTrip(t *testing.T) {
	_, dsn, src := todosSource(t)
	mustCLI(t, "tenant", "import", "acme", "--from", src, "--plan", "free", "--admin-password", appPassword)
	// Another shared-tier tenant's rows stay out of acme's export.
	mustCLI(t, "tenant", "import", "globex", "--from", src, "--plan", "free", "--admin-password", appPassword)

	dir := t.TempDir()
	first, again, moved := filepath.Join(dir, "acme.tar"), filepath.Join(dir, "acme-again.tar"), filepath.Join(dir, "acme-db.tar")
	mustCLI(t, "tenant", "export", "acme", "--out", first)
	before := readManifest(t, first)
	if i := tableIndex(before, "todos"); i < 0 || before.Tables[i].Rows != 2572 || tableIndex(before, "todo_tags") < 0 {
		t.Fatalf("export of acme: tables %+v; want todos with 2572 rows and todo_tags", before.Tables)
	}
	for _, c := range before.Tables[tableIndex(before, "todos")].Columns {
		if c.Name == "tenant_id" {
			t.Fatal("a shared-tier export has the tenant_id column")
		}
	}

	mustCLI(t, "tenant", "delete", "acme", "--confirm", "acme")
	var entries []catalog.AuditEntry
	if err := json.Unmarshal([]byte(mustCLI(t, "audit", "--tenant", "acme", "-o", "json")), &entries); err != nil {
		t.Fatal(err)
	}
	var d catalog.Deletion
	if len(entries) != 1 || entries[0].Action != "delete" || json.Unmarshal(entries[0].Detail, &d) != nil ||
		d.Rows["todos"] != 2572 || d.Users != 1 || d.Tier != catalog.TierShared {
		t.Fatalf("audit log after delete: %+v (%+v)", entries, d)
	}

	mustCLI(t, "tenant", "import", "acme", "--from-export", first, "--plan", "free", "--admin-password", appPassword)
	mustCLI(t, "tenant", "export", "acme", "--out", again)
	mustCLI(t, "tenant", "import", "acme-db", "--from-export", first, "--plan", "enterprise", "--admin-password", appPassword)
	mustCLI(t, "tenant", "export", "acme-db", "--out", moved)
	for _, path := range []string{again, moved} {
		if after := readManifest(t, path); !reflect.DeepEqual(after.Tables, before.Tables) {
			t.Fatalf("%s differs from the first export:\n%+v\n%+v", filepath.Base(path), after.Tables, before.Tables)
		}
	}
	addr := startAppProxy(t, dsn)
	var id int64
	if err := proxyConn(t, addr, "acme").QueryRow(context.Background(), "INSERT INTO todos (title) VALUES ('back') RETURNING id").Scan(&id); err != nil || id != 3001 {
		t.Fatalf("first insert after the round trip: id %d, %v; want 3001", id, err)
	}
}

func tableIndex(m catalog.Manifest, name string) int {
	for i, tb := range m.Tables {
		if tb.Name == name {
			return i
		}
	}
	return -1
}

// todosSource starts a cluster with a migrated catalog (the todos app
// stored and applied) and a single-tenant todos database made by psql, and
// returns the cluster, the catalog's DSN and the source's.
func todosSource(t *testing.T) (cluster *pgcluster.Cluster, dsn, src string) {
	t.Helper()
	cluster = pgtest.StartT(t)
	dsn = pgtest.NewDatabase(t, cluster)
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	src = pgtest.NewDatabase(t, cluster)
	psqlRun(t, src, "-f", filepath.Join(todosDir, "0001_todos.up.sql"), "-f", filepath.Join(todosDir, "0002_tags.up.sql"), "-c", fillTodos)
	mustCLI(t, "migrate", "up")
	mustCLI(t, "migrate", "up", "--dir", todosDir)
	return cluster, dsn, src
}
