package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap/zaptest"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/chatapi"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// tenantPassword is every test tenant's admin password.
const tenantPassword = "correct-horse-battery"

// tierTenants are provisioned once per environment, one per tier.
var tierTenants = []struct {
	sub  string
	plan string
	tier catalog.Tier
}{
	{"acme", catalog.PlanFree, catalog.TierShared},
	{"globex", catalog.PlanFree, catalog.TierShared},
	{"initech", catalog.PlanStandard, catalog.TierSchema},
	{"umbrella", catalog.PlanEnterprise, catalog.TierDatabase},
}

// proxyEnv is a migrated catalog with tenants in every tier on a private
// cluster (the serving role is cluster-wide), plus a pool. Proxies are
// started per test on top of it.
type proxyEnv struct {
	cluster *pgcluster.Cluster
	cat     *catalog.Catalog
	pool    *pool.Manager
	// catalogDSN reaches the catalog, for a proxy run as its own process.
	catalogDSN string
}

// unthrottled lifts the server-time budget (server_time_per_second) of
// the tenants subs: for tests that load the proxy with a free tenant's
// traffic to test something else, which the free plan's 50 ms a second
// would only make slow. The limit's own tests keep it.
func (e *proxyEnv) unthrottled(t testing.TB, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if _, err := e.cat.Update(ctxT(t), sub, catalog.UpdateRequest{Limits: map[string]*float64{catalog.LimitServerTimePerSecond: new(float64)}}); err != nil {
			t.Fatal(err)
		}
	}
}

// newProxyEnv builds the environment on a private cluster with default
// settings.
func newProxyEnv(t testing.TB) *proxyEnv {
	t.Helper()
	return newProxyEnvWith(t, pgcluster.Options{}, pool.Config{})
}

// newProxyEnvWith builds the environment with cluster settings and a pool
// configuration of the caller's choosing.
func newProxyEnvWith(t testing.TB, opts pgcluster.Options, poolCfg pool.Config) *proxyEnv {
	t.Helper()
	c, dsn, cat := newChatCatalog(t, opts)
	ctx := ctxT(t)
	for _, tt := range tierTenants {
		if _, err := cat.Create(ctx, catalog.CreateRequest{Subdomain: tt.sub, Plan: tt.plan, Tier: tt.tier, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
			t.Fatalf("create tenant %s: %v", tt.sub, err)
		}
	}
	mgr, err := pool.NewManager(poolCfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	return &proxyEnv{cluster: c, cat: cat, pool: mgr, catalogDSN: dsn}
}

// newChatCatalog starts a private cluster with a catalog migrated as an
// operator serving the chat migrates it (migrate up --dir
// chatapi/migrations), so that every tenant created in it gets the chat's
// tables, and opens the catalog.
func newChatCatalog(t testing.TB, opts pgcluster.Options) (*pgcluster.Cluster, string, *catalog.Catalog) {
	t.Helper()
	c := pgtest.StartT(t, opts)
	dsn := pgtest.NewDatabase(t, c)
	ctx := ctxT(t)
	if _, err := chatapi.MigrateUp(ctx, dsn, migrations.Options{}); err != nil {
		t.Fatalf("migrate up --dir %s: %v", chatapi.SchemaDir, err)
	}
	cat, err := catalog.Open(ctx, dsn, catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	return c, dsn, cat
}

// startProxy is StartProxy over e's catalog and pool.
func (e *proxyEnv) startProxy(t testing.TB, cfg proxy.Config) (*proxy.Server, string) {
	t.Helper()
	return StartProxy(t, cfg, e.cat, e.pool)
}

// objectName is the schema, role or database name the catalog gave tenant
// sub: its schema's in the schema tier, its database's in the database
// tier, and in the shared tier, which has none, a fresh name no object has.
func (e *proxyEnv) objectName(t testing.TB, sub string) string {
	t.Helper()
	tn, err := e.cat.Show(ctxT(t), sub)
	if err != nil {
		t.Fatalf("tenant %s: %v", sub, err)
	}
	switch tn.Tier {
	case catalog.TierSchema:
		return tn.SchemaName
	case catalog.TierDatabase:
		return tn.Database
	}
	return catalog.NewObjectName()
}

// dsn is a libpq URL for user at the proxy, with extra query parameters.
func dsn(addr, user, password string, extra ...string) string {
	host, port, _ := net.SplitHostPort(addr)
	q := extra
	if !strings.Contains(strings.Join(extra, "&"), "sslmode=") {
		q = append([]string{"sslmode=disable"}, extra...)
	}
	return fmt.Sprintf("postgres://%s:%s@%s:%s/app?%s", user, password, host, port, strings.Join(q, "&"))
}

func connect(t testing.TB, connString string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), connString)
	if err != nil {
		t.Fatalf("connect %s: %v", redact(connString), err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// sqlstateOf returns err's SQLSTATE, "" for nil, and a readable note
// for errors without one, so assertions print what happened.
func sqlstateOf(err error) string {
	if err == nil {
		return ""
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return "no SQLSTATE: " + err.Error()
}

func redact(s string) string { return strings.ReplaceAll(s, tenantPassword, "…") }

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// tenantLoginDSN connects directly to database as database-tier tenant
// sub's own login role, the role the proxy logs sub's sessions in with.
func (e *proxyEnv) tenantLoginDSN(t testing.TB, sub, database string) string {
	t.Helper()
	tn, err := e.cat.Show(ctxT(t), sub)
	if err != nil {
		t.Fatal(err)
	}
	if tn.LoginRole() == "" || tn.LoginPassword == "" {
		t.Fatalf("tenant %s has no login role", sub)
	}
	return e.directDSN(tn.LoginRole(), tn.LoginPassword, database)
}

func (e *proxyEnv) directDSN(user, password, database string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password),
		Host: e.cluster.Addr(), Path: "/" + database, RawQuery: "sslmode=disable"}
	return u.String()
}
