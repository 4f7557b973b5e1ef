package migrations_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
