package pgtest

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/scram"
)

func TestMain(m *testing.M) { RunMain(m) }

// TestScramVerifierAcceptedByPostgres proves internal/scram writes the
// format PostgreSQL stores: a role given our verifier logs in with the
// password it was derived from.
func TestScramVerifierAcceptedByPostgres(t *testing.T) {
	c := Shared(t)
	ctx := context.Background()
	v, err := scram.NewVerifier("pencil")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "postgres", "CREATE ROLE verifier_check LOGIN PASSWORD '"+v+"'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Exec(ctx, "postgres", "DROP ROLE verifier_check") })
	cfg, _ := pgx.ParseConfig(c.DSN("postgres"))
	cfg.User, cfg.Password = "verifier_check", "pencil"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("login with the verifier's password: %v", err)
	}
	conn.Close(ctx)
}

func TestTwoClustersAndCleanup(t *testing.T) {
	a, b := StartT(t), StartT(t)
	if a.Port == b.Port {
		t.Fatalf("two clusters on one port %d", a.Port)
	}
	ctx := context.Background()
	dsn := NewDatabase(t, b)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.Dir); !os.IsNotExist(err) {
		t.Fatalf("stopped cluster left %s behind (stat err %v)", a.Dir, err)
	}
	if _, err := pgx.Connect(ctx, a.DSN("postgres")); err == nil {
		t.Fatal("stopped cluster still accepts connections")
	}
}
