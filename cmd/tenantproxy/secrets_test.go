package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/test"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog/secrets"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

func writeKeyFile(t *testing.T, id string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), id+".key")
	if err := os.WriteFile(path, []byte("# tenantproxy secrets key\n"+id+"="+secrets.Generate()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// storedBackendSecrets reads backend main's secret columns as they are
// stored, and the catalog's own password, which its admin DSN carries.
func storedBackendSecrets(t *testing.T, dsn string) (adminDSN, servingPassword string) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), "SELECT admin_dsn, serving_password FROM backends WHERE name = 'main'").
		Scan(&adminDSN, &servingPassword); err != nil {
		t.Fatal(err)
	}
	return adminDSN, servingPassword
}

// TestSealedCatalogServesLoginsAndRotatesKeys runs the commands an operator
// would: migrate and create a tenant with a key file, log in through the
// proxy, rotate to a second key (given in a YAML config), and see the old
// key alone and no key at all refused with errors naming the backend.
func TestSealedCatalogServesLoginsAndRotatesKeys(t *testing.T) {
	cluster := pgtest.StartT(t) // the serving role is cluster-wide
	dsn := pgtest.NewDatabase(t, cluster)
	keyA, keyB := writeKeyFile(t, "a"), writeKeyFile(t, "b")
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	t.Setenv("TENANTPROXY_SECRETS_KEY_FILE", keyA)

	mustCLI(t, "migrate", "up")
	adminDSN, password := storedBackendSecrets(t, dsn)
	for _, stored := range []string{adminDSN, password} {
		if !strings.HasPrefix(stored, "enc:v1:a:") || strings.Contains(stored, cluster.Password) {
			t.Fatalf("stored secret %q: want sealed with key a, no password in clear", stored)
		}
	}
	mustCLI(t, "tenant", "create", "acme", "--plan", "standard", "--admin-user", "alice", "--admin-password", "correct-horse")

	listen := test.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", listen, "--admin-listen", test.FreeAddr(t), "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	var conn *pgx.Conn
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if conn, err = pgx.Connect(ctx, "postgres://alice.acme:correct-horse@"+listen+"/chat?sslmode=disable"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve with a sealed catalog never accepted alice.acme: %v", err)
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("query through the proxy: %v", err)
	}
	conn.Close(ctx)
	cancel()
	if err := <-done; err != nil && !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("serve: %v", err)
	}

	// Rotate to b with b current and a previous, from a YAML config.
	config := filepath.Join(t.TempDir(), "tenantproxy.yaml")
	if err := os.WriteFile(config, []byte("secrets-key-file: ["+keyB+", "+keyA+"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TENANTPROXY_SECRETS_KEY_FILE", "")
	os.Unsetenv("TENANTPROXY_SECRETS_KEY_FILE")
	if out := mustCLI(t, "catalog", "rotate-secrets", "--config", config); !strings.Contains(out, "1 backends with key b") {
		t.Fatalf("rotate-secrets: %q", out)
	}
	if d, p := storedBackendSecrets(t, dsn); !strings.HasPrefix(d, "enc:v1:b:") || !strings.HasPrefix(p, "enc:v1:b:") {
		t.Fatalf("after rotation the columns hold %q, %q; want key b", d, p)
	}
	if out := mustCLI(t, "backend", "list", "--secrets-key-file", keyB); !strings.Contains(out, "main") {
		t.Fatalf("backend list with key b alone: %q", out)
	}
	mustCLI(t, "tenant", "create", "hooli", "--plan", "enterprise", "--secrets-key-file", keyB)
	for _, args := range [][]string{
		{"backend", "list", "--secrets-key-file", keyA},
		{"backend", "list"},
		{"serve", "--listen", test.FreeAddr(t), "--admin-listen", test.FreeAddr(t)},
	} {
		_, err := cli(t, args...)
		if err == nil || !strings.Contains(err.Error(), "backend main") || !strings.Contains(err.Error(), `key "b"`) {
			t.Errorf("tenantproxy %s: %v; want an error naming backend main and key b", strings.Join(args, " "), err)
		}
	}
}
