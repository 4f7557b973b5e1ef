package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/migrations"
)

// TestMigrateUpLockFlags: --lock-timeout and --lock-retries reach
// migrations.Options from their flags, TENANTPROXY_* variables and the YAML
// file; their defaults are the package's, and 0 on the command line means
// none (-1 in Options, whose zero means the default).
func TestMigrateUpLockFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tp.yaml")
	if err := os.WriteFile(file, []byte("lock-retries: 4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		path    string
		timeout time.Duration
		retries int
	}{
		{name: "defaults", timeout: migrations.DefaultLockTimeout, retries: migrations.DefaultLockRetries},
		{name: "flags", args: []string{"--lock-timeout=500ms", "--lock-retries=3"}, timeout: 500 * time.Millisecond, retries: 3},
		{name: "zero means none", args: []string{"--lock-timeout=0", "--lock-retries=0"}, timeout: -1, retries: -1},
		{name: "environment and file", env: map[string]string{"TENANTPROXY_LOCK_TIMEOUT": "5s"}, path: file, timeout: 5 * time.Second, retries: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			migrate, f := buildMigrateCommand(&globals{})
			up, _, err := migrate.Find([]string{"up"})
			if err != nil {
				t.Fatal(err)
			}
			if err := configure(up, tc.args, tc.env, tc.path); err != nil {
				t.Fatal(err)
			}
			opts := f.options(&globals{}, io.Discard)
			if opts.LockTimeout != tc.timeout || opts.LockRetries != tc.retries || opts.Retry == nil {
				t.Fatalf("LockTimeout %v, LockRetries %d, Retry set %v; want %v, %d, true",
					opts.LockTimeout, opts.LockRetries, opts.Retry != nil, tc.timeout, tc.retries)
			}
		})
	}
}
