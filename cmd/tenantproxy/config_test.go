package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestApplyConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tp.yaml")
	if err := os.WriteFile(file, []byte("listen: file:1\ncatalog-dsn: from-file\nbase-domain: file.example\nlisten-extra: [a, b]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    map[string]string
		wantErr string
	}{
		{
			name: "file fills what nothing else sets",
			want: map[string]string{"listen": "file:1", "catalog-dsn": "from-file", "base-domain": "file.example", "listen-extra": "[a,b]"},
		},
		{
			name: "environment beats file",
			env:  map[string]string{"TENANTPROXY_CATALOG_DSN": "from-env"},
			want: map[string]string{"catalog-dsn": "from-env", "listen": "file:1"},
		},
		{
			name: "command line beats environment",
			args: []string{"--catalog-dsn", "from-flag"},
			env:  map[string]string{"TENANTPROXY_CATALOG_DSN": "from-env"},
			want: map[string]string{"catalog-dsn": "from-flag"},
		},
		{
			name:    "bad value in environment is an error naming the variable",
			env:     map[string]string{"TENANTPROXY_WORKERS": "many"},
			wantErr: "TENANTPROXY_WORKERS",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
			cmd.Flags().String("listen", "default:1", "")
			cmd.Flags().String("catalog-dsn", "", "")
			cmd.Flags().String("base-domain", "", "")
			cmd.Flags().StringSlice("listen-extra", nil, "")
			cmd.Flags().Int("workers", 1, "")
			err := configure(cmd, tc.args, tc.env, file)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range tc.want {
				if got := cmd.Flags().Lookup(name).Value.String(); got != want {
					t.Errorf("--%s = %q, want %q", name, got, want)
				}
			}
		})
	}
}

// configure parses args into cmd, then applies env (standing for the
// process environment) and the YAML file at path ("" for none), as the
// CLI does before a command runs.
func configure(cmd *cobra.Command, args []string, env map[string]string, path string) error {
	if err := cmd.ParseFlags(args); err != nil {
		return err
	}
	return applyConfig(cmd, path, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
}

func TestApplyConfigRejectsUnknownKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tp.yaml")
	os.WriteFile(file, []byte("lisen: typo\n"), 0o600)
	cmd := &cobra.Command{Use: "x"}
	cmd.Flags().String("listen", "", "")
	err := applyConfig(cmd, file, func(string) (string, bool) { return "", false })
	if err == nil || !strings.Contains(err.Error(), `"lisen"`) {
		t.Fatalf("err = %v, want unknown setting \"lisen\"", err)
	}
}
