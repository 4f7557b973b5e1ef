package test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestRefusedStatementFailsTheTransaction checks, in every tier, both pool
// modes and both protocols, that a statement the proxy refuses fails the
// client's transaction exactly as a server error would: inside a
// transaction block the status becomes E, the next statement gets 25P02
// and COMMIT rolls back what the block wrote; outside one the session
// goes on idle.
func TestRefusedStatementFailsTheTransaction(t *testing.T) {
	e := newIsolationEnv(t)
	const refusedSQL = "SET ROLE postgres"
	n := 0
	for _, p := range isolationPairs {
		for _, mode := range poolModes {
			for _, proto := range []string{"simple", "extended"} {
				t.Run(fmt.Sprintf("%s/%s/%s", p.tier, mode, proto), func(t *testing.T) {
					conn := e.pgconnIn(t, mode, p.attacker)
					n++
					probe := fmt.Sprintf("refusal-probe-%d", n)
					mustExec(t, conn, "BEGIN")
					mustExec(t, conn, "INSERT INTO users (username) VALUES ('"+probe+"')")
					_, err := runAttack(t, conn, proto, refusedSQL)
					wantCode(t, err, "42501", refusedSQL)
					if s := conn.TxStatus(); s != 'E' {
						t.Fatalf("after a refused statement in a block the status is %q; want 'E'", s)
					}
					_, err = runAttack(t, conn, proto, "SELECT 1")
					wantCode(t, err, "25P02", "SELECT 1 after the refusal")
					res, err := conn.Exec(ctxT(t), "COMMIT").ReadAll()
					if err != nil {
						t.Fatalf("COMMIT: %v", err)
					}
					if tag := res[0].CommandTag.String(); tag != "ROLLBACK" {
						t.Fatalf("COMMIT of a failed block answered %q; want ROLLBACK", tag)
					}
					if got := queryText(t, conn, "SELECT count(*) FROM users WHERE username = '"+probe+"'"); got != "0" {
						t.Fatalf("the failed block's row was committed: %s rows", got)
					}
					// Outside a block the refusal ends nothing.
					_, err = runAttack(t, conn, proto, refusedSQL)
					wantCode(t, err, "42501", refusedSQL)
					if s := conn.TxStatus(); s != 'I' {
						t.Fatalf("after a refused statement outside a block the status is %q; want 'I'", s)
					}
					if got := queryText(t, conn, "SELECT 41 + 1"); got != "42" {
						t.Fatalf("the session is not usable after a refusal: got %q", got)
					}
					// A statement the proxy's parser rejects is a syntax
					// error where the server would say so, and fails the
					// block like one.
					mustExec(t, conn, "BEGIN")
					_, err = runAttack(t, conn, proto, "SELECT 1; SELEC 2")
					wantCode(t, err, "42601", "a syntax error")
					var pgErr *pgconn.PgError
					if errors.As(err, &pgErr) && pgErr.Position != 11 {
						t.Errorf("syntax error at position %d; want 11, as PostgreSQL reports it", pgErr.Position)
					}
					if s := conn.TxStatus(); s != 'E' {
						t.Fatalf("after a syntax error in a block the status is %q; want 'E'", s)
					}
					mustExec(t, conn, "ROLLBACK")
				})
			}
		}
	}
}

func mustExec(t *testing.T, conn *pgconn.PgConn, sql string) {
	t.Helper()
	if _, err := conn.Exec(ctxT(t), sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func wantCode(t *testing.T, err error, code, what string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code {
		t.Fatalf("%s: got %v; want SQLSTATE %s", what, err, code)
	}
}
