package pool_test

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tenantproxy/tenantproxy/pool"
)

// leaveBackendState leaves on c what RESET ALL does not remove: a fixed
// seed for random() (returning the value random() gives right after it),
// a prepared statement, and a lastval.
func leaveBackendState(t *testing.T, c *pool.Conn) (seeded string) {
	t.Helper()
	value(t, c, "SELECT setseed(0.5)")
	seeded = value(t, c, "SELECT random()")
	value(t, c, "SELECT setseed(0.5)")
	if _, pgErr := query(t, c, "PREPARE leftover AS SELECT 'secret literal'"); pgErr != nil {
		t.Fatal(pgErr)
	}
	value(t, c, "SELECT nextval('public.reset_seq')")
	return seeded
}

// assertNoBackendState fails if what leaveBackendState left is still
// there: random() goes on from the seed, the statement is listed, lastval
// answers.
func assertNoBackendState(t *testing.T, c *pool.Conn, seeded string) {
	t.Helper()
	if got := value(t, c, "SELECT random()"); got == seeded {
		t.Errorf("random() gives %s, the value after the previous holder's setseed(0.5); want a seed nobody chose", got)
	}
	if got := value(t, c, "SELECT count(*) FROM pg_prepared_statements"); got != "0" {
		t.Errorf("%s prepared statements left by the previous holder; want 0", got)
	}
	if rows, pgErr := query(t, c, "SELECT lastval()"); pgErr == nil || pgErr.Code != "55000" {
		t.Errorf("lastval() after the previous holder's nextval: %v, %v; want 55000 (not yet defined in this session)", rows, pgErr)
	}
}

func TestReleaseResetsWhatDiscardAllLeaves(t *testing.T) {
	f := newFixture(t)
	f.super(t, "CREATE SEQUENCE public.reset_seq; GRANT USAGE ON SEQUENCE public.reset_seq TO "+f.svc)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	c := acquire(t, m, f.target())
	pid := c.PID()
	seeded := leaveBackendState(t, c)
	m.Release(c, true)

	c = acquire(t, m, f.target())
	defer m.Release(c, true)
	if c.PID() != pid {
		t.Fatalf("backend %d after release; want the same backend %d", c.PID(), pid)
	}
	assertNoBackendState(t, c, seeded)
}

// The reset that moves a connection to another context in transaction
// mode removes the per-backend state too, in the one Query of the switch:
// no round trip of its own.
func TestAcquireTxSwitchResetsWhatResetAllLeaves(t *testing.T) {
	f := newFixture(t)
	f.super(t, "CREATE SEQUENCE public.reset_seq; GRANT USAGE ON SEQUENCE public.reset_seq TO "+f.svc)
	m, _ := newManager(t, pool.Config{MaxConnsPerKey: 1})
	plain := pool.NewTxTarget(f.target("SET application_name = 'previous'"))
	schema := pool.NewTxTarget(f.target(f.schemaSetup()...))
	c := acquireTx(t, m, plain)
	seeded := leaveBackendState(t, c)
	c.AddStatement("leftover")
	m.ReleaseTx(c, true)

	c, setup, queries, err := m.AcquireTx(context.Background(), schema)
	if err != nil {
		t.Fatal(err)
	}
	defer m.ReleaseTx(c, true)
	if queries != 1 || setup[0] != 'Q' || int(binary.BigEndian.Uint32(setup[1:]))+1 != len(setup) {
		t.Fatalf("switch: %d queries in %d bytes; want one Query message", queries, len(setup))
	}
	if c.HasStatement("leftover") {
		t.Error("the record of prepared statements survived the switch, which deallocates them")
	}
	nc := c.NetConn()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(setup); err != nil {
		t.Fatal(err)
	}
	if _, pgErr := receive(t, pgproto3.NewFrontend(nc, nc), "switch"); pgErr != nil {
		t.Fatal(pgErr)
	}
	assertNoBackendState(t, c, seeded)
}
