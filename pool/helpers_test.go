package pool_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/pool"
)

func TestMain(m *testing.M) { pgtest.RunMain(m) }

// fixture is a fresh database on the shared cluster with a serving role
// (LOGIN, password, no privileges beyond the tenant role it is granted, as
// docs/design.md prescribes) and one schema-tier tenant role and schema.
type fixture struct {
	cluster    *pgcluster.Cluster
	superDSN   string // superuser, in the fixture's database
	database   string
	svc        string // serving role
	tenantRole string // NOLOGIN, owns schema of the same name; svc is a member
}

const svcPassword = "serving-secret"

// newFixture also arms a goroutine-leak check that runs after every other
// cleanup of the test, so Manager.Close must have ended all it started.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	c := pgtest.Shared(t)
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })

	suffix := randomSuffix()
	f := &fixture{cluster: c, svc: "svc_" + suffix, tenantRole: "tenant_" + suffix}
	// Registered before the database so that it runs after the database
	// (and the schema the tenant role owns) is dropped.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Exec(ctx, "postgres", "DROP ROLE IF EXISTS "+f.svc+", "+f.tenantRole); err != nil {
			t.Logf("drop roles: %v", err)
		}
	})
	f.superDSN = pgtest.NewDatabase(t, c)
	u, err := url.Parse(f.superDSN)
	if err != nil {
		t.Fatal(err)
	}
	f.database = strings.TrimPrefix(u.Path, "/")
	f.super(t, `CREATE ROLE `+f.svc+` LOGIN PASSWORD '`+svcPassword+`' NOSUPERUSER NOINHERIT NOCREATEROLE NOCREATEDB NOBYPASSRLS;
		CREATE ROLE `+f.tenantRole+` NOLOGIN;
		GRANT `+f.tenantRole+` TO `+f.svc+`;
		CREATE SCHEMA `+f.tenantRole+` AUTHORIZATION `+f.tenantRole)
	return f
}

func randomSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// super runs sql as the superuser in the fixture's database.
func (f *fixture) super(t testing.TB, sql string) {
	t.Helper()
	if err := f.cluster.Exec(context.Background(), f.database, sql); err != nil {
		t.Fatal(err)
	}
}

// superQuery returns the first column of the first row of sql run as the
// superuser.
func (f *fixture) superQuery(t testing.TB, sql string, args ...any) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.superDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var out string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&out); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// serverConns counts the serving role's backends as the server sees them.
func (f *fixture) serverConns(t testing.TB) string {
	return f.superQuery(t, "SELECT count(*)::text FROM pg_stat_activity WHERE usename = $1", f.svc)
}

// waitServerConns polls until the server reports want backends of the
// serving role: backends exit asynchronously after the client hangs up.
func (f *fixture) waitServerConns(t testing.TB, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := f.serverConns(t)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server has %s connections of %s, want %s", got, f.svc, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) target(setup ...string) pool.Target {
	return pool.Target{
		Addr:     f.cluster.Addr(),
		Database: f.database,
		User:     f.svc,
		Password: svcPassword,
		Setup:    setup,
	}
}

// schemaSetup is what the proxy sends for a schema-tier tenant.
func (f *fixture) schemaSetup() []string {
	return []string{"SET ROLE " + f.tenantRole, "SET search_path = " + f.tenantRole}
}

// newManager returns a Manager closed when the test ends, with its metrics
// in reg.
func newManager(t testing.TB, cfg pool.Config) (*pool.Manager, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	m, err := pool.NewManager(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m, reg
}

func acquire(t testing.TB, m *pool.Manager, tg pool.Target) *pool.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.Acquire(ctx, tg)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	return c
}

// query runs sql over the Conn's raw socket, as the relay would, and
// returns the text of every column of every row, or the server's error.
func query(t testing.TB, c *pool.Conn, sql string) ([][]string, *pgconn.PgError) {
	t.Helper()
	nc := c.NetConn()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	defer nc.SetDeadline(time.Time{})
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.Query{String: sql})
	if err := fe.Flush(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return receive(t, fe, sql)
}

// receive reads rows or an error up to a ReadyForQuery.
func receive(t testing.TB, fe *pgproto3.Frontend, sql string) ([][]string, *pgconn.PgError) {
	t.Helper()
	var rows [][]string
	var pgErr *pgconn.PgError
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		switch msg := msg.(type) {
		case *pgproto3.DataRow:
			row := make([]string, len(msg.Values))
			for i, v := range msg.Values {
				row[i] = string(v)
			}
			rows = append(rows, row)
		case *pgproto3.ErrorResponse:
			pgErr = pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.ReadyForQuery:
			return rows, pgErr
		}
	}
}

// value runs sql, which must succeed, and returns its single value.
func value(t testing.TB, c *pool.Conn, sql string) string {
	t.Helper()
	rows, pgErr := query(t, c, sql)
	if pgErr != nil {
		t.Fatalf("%s: %v", sql, pgErr)
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		t.Fatalf("%s: got %v, want one value", sql, rows)
	}
	return rows[0][0]
}

// gauge reads a series of reg; absent series read as 0.
func gauge(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
	metric:
		for _, m := range fam.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metric
				}
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
