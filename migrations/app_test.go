package migrations_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/migrations"
)

func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestReadAppDirLayouts: golang-migrate's and tern's up/down pairs and
// goose's plain NNNN_name.sql are read in version order; other files are
// ignored.
func TestReadAppDirLayouts(t *testing.T) {
	dir := writeDir(t, map[string]string{
		"0002_tags.up.sql":          "CREATE TABLE tags (id int);",
		"0002_tags.down.sql":        "DROP TABLE tags;",
		"0001_todos.sql":            "CREATE TABLE todos (id int);",
		"20240101120000_big.up.sql": "CREATE TABLE big (id int);",
		"README.md":                 "not a migration",
	})
	ms, err := migrations.ReadAppDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, strings.Join([]string{m.Name, m.Up, m.Down}, "|"))
		if len(m.Checksum) != 64 {
			t.Fatalf("%d_%s: checksum %q", m.Version, m.Name, m.Checksum)
		}
	}
	want := []string{"todos|CREATE TABLE todos (id int);|", "tags|CREATE TABLE tags (id int);|DROP TABLE tags;", "big|CREATE TABLE big (id int);|"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") || ms[1].Version != 2 || !ms[1].HasDown || ms[0].HasDown || ms[2].Version != 20240101120000 {
		t.Fatalf("read %+v", ms)
	}
}

// TestReadAppDirRefusals: what ReadAppDir cannot read unambiguously is an
// error that names the file or version.
func TestReadAppDirRefusals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"no version", map[string]string{"todos.up.sql": "x"}, "want NNNN_name.up.sql"},
		{"no name", map[string]string{"0001.up.sql": "x"}, "want NNNN_name.up.sql"},
		{"two up files", map[string]string{"0001_a.sql": "x", "0001_a.up.sql": "y"}, "version 1 has two up files"},
		{"two names", map[string]string{"0001_a.up.sql": "x", "0001_b.down.sql": "y"}, `version 1 is named both`},
		{"down only", map[string]string{"0001_a.down.sql": "x"}, "version 1 has a down file and no up file"},
		{"goose annotations", map[string]string{"0001_a.sql": "-- +goose Up\nCREATE TABLE a ();\n-- +goose Down\nDROP TABLE a;"}, "split it into 0001_a.up.sql"},
		{"tern separator", map[string]string{"001_a.sql": "CREATE TABLE a ();\n---- create above / drop below ----\nDROP TABLE a;"}, "up and down in one file"},
		{"empty", map[string]string{"notes.txt": "x"}, "holds no NNNN_name.up.sql"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := migrations.ReadAppDir(writeDir(t, tc.files))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ReadAppDir: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestAppMigrationBehindATenantsLockFailsOnlyThatTarget: an app version
// altering a shared table that a session holds (idle in a transaction)
// gives up after its lock retries with nothing of it applied, the schema
// tenants get it, and the next Up, from the stored set alone, completes
// the shared target.
func TestAppMigrationBehindATenantsLockFailsOnlyThatTarget(t *testing.T) {
	c, dsn := freshCatalog(t)
	seedSchemaTenants(t, c, dsn, "app", 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v1 := writeDir(t, map[string]string{"0001_todos.up.sql": "CREATE TABLE todos (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text UNIQUE);"})
	ms, err := migrations.ReadAppDir(v1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Up(ctx, dsn, migrations.Options{App: ms}); err != nil {
		t.Fatal(err)
	}

	holder := connect(t, c.DSN(migrations.SharedDatabase))
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT count(*) FROM todos"); err != nil {
		t.Fatal(err)
	}
	v2 := writeDir(t, map[string]string{"0002_note.up.sql": "ALTER TABLE todos ADD COLUMN note text;"})
	if ms, err = migrations.ReadAppDir(v2); err != nil {
		t.Fatal(err)
	}
	var retried []migrations.LockRetry
	opts := migrations.Options{App: ms, LockTimeout: 100 * time.Millisecond, LockRetries: 1,
		Retry: func(r migrations.LockRetry) { retried = append(retried, r) }}
	rep, err := migrations.Up(ctx, dsn, opts)
	if err == nil || rep.Failed != 1 {
		t.Fatalf("up while the lock is held: %v, %d failed; want the shared target alone", err, rep.Failed)
	}
	for _, r := range rep.Results[1:] {
		var lte *migrations.LockTimeoutError
		switch {
		case r.Target.Kind == migrations.KindShared:
			if !errors.As(r.Err, &lte) || !strings.Contains(r.Err.Error(), "app 0002_note") || r.App.Version != 1 {
				t.Fatalf("shared target: %v, app %+v; want a LockTimeoutError naming 0002_note at app version 1", r.Err, r.App)
			}
		case r.Err != nil || r.App.Version != 2:
			t.Fatalf("%s: %v, app %+v; want app version 2", r.Target, r.Err, r.App)
		}
	}
	if len(retried) != 1 || retried[0].Version != 2 || retried[0].Target.Kind != migrations.KindShared {
		t.Fatalf("lock retries %+v; want one, of the shared target's version 2", retried)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = migrations.Up(ctx, dsn, migrations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Results[1:] {
		applied := 0
		if r.Target.Kind == migrations.KindShared {
			applied = 1
		}
		if r.App.Applied != applied || r.App.Version != 2 || r.App.Drifted() {
			t.Fatalf("rerun %s: app %+v; want %d applied, at version 2", r.Target, r.App, applied)
		}
	}
}
