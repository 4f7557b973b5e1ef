package pgcluster_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// The clusters come from internal/pgtest, which skips without PostgreSQL
// binaries (except in CI) and stops them when the tests end.
func TestMain(m *testing.M) { pgtest.RunMain(m) }

func TestClusterServesScramOverTCP(t *testing.T) {
	c := pgtest.Shared(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var method, fsync string
	if err := conn.QueryRow(ctx, "SELECT current_setting('password_encryption'), current_setting('fsync')").Scan(&method, &fsync); err != nil {
		t.Fatal(err)
	}
	if method != "scram-sha-256" || fsync != "off" {
		t.Fatalf("password_encryption=%s fsync=%s, want scram-sha-256 and off", method, fsync)
	}
	wrong, err := pgx.ParseConfig(c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	wrong.Password = "not-the-password"
	if bad, err := pgx.ConnectConfig(ctx, wrong); err == nil {
		bad.Close(ctx)
		t.Fatal("connecting with a wrong password succeeded; TCP must require scram-sha-256")
	}
}

func TestRestartKeepsPortAndData(t *testing.T) {
	c := pgtest.StartT(t)
	ctx := context.Background()
	if err := c.Exec(ctx, "postgres", "CREATE TABLE survives (x int)"); err != nil {
		t.Fatal(err)
	}
	port := c.Port
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Port != port {
		t.Fatalf("port changed from %d to %d", port, c.Port)
	}
	if err := c.Exec(ctx, "postgres", "SELECT * FROM survives"); err != nil {
		t.Fatal(err)
	}
}
