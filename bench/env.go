package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/chatapi"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/router"
)

// tenantPassword is every bench tenant user's password. The cluster lives
// in a temporary directory on 127.0.0.1 and is removed when the run ends.
const tenantPassword = "bench-password"

// tenantUser is the login of every bench tenant: clients connect as
// tenantUser.<subdomain>.
const tenantUser = "alice"

// env is the PostgreSQL side of a run: the cluster, its catalog, the bench
// tenants and the pgbench tables.
type env struct {
	cluster *pgcluster.Cluster
	cat     *catalog.Catalog
	// catalogDSN is the control database's admin DSN, for `serve`.
	catalogDSN string
	// servingUser and servingPassword are the login the proxy itself uses
	// on the backend; direct and PgBouncer clients use it too, so that all
	// targets reach the same tables with the same rights.
	servingUser, servingPassword string
	// database is the shared-tier database, where the pgbench tables live.
	database string
	// tenants are the bench tenants, alternating shared and schema tier;
	// setup[i] is what the proxy runs to put a server connection into
	// tenants[i]'s context (direct clients run it themselves).
	tenants []*catalog.Tenant
	setup   [][]string
	// provisioned counts tenants created by scenario (f), for unique names.
	provisioned atomic.Int64
}

// startEnv starts PostgreSQL with room for maxConns connections, migrates
// a catalog, provisions n tenants and initialises pgbench at scale.
func startEnv(ctx context.Context, maxConns, n, scale int, progress func(string)) (e *env, err error) {
	progress("starting PostgreSQL")
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{Conf: map[string]string{
		"max_connections": strconv.Itoa(maxConns),
		"shared_buffers":  "256MB",
	}})
	if err != nil {
		return nil, fmt.Errorf("bench needs PostgreSQL server binaries (apt-get install -y postgresql, or set PG_BIN): %w", err)
	}
	e = &env{cluster: cluster}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if err := cluster.Exec(ctx, "postgres", "CREATE DATABASE tenantproxy"); err != nil {
		return nil, err
	}
	e.catalogDSN = cluster.DSN("tenantproxy")
	progress("migrating the catalog with the chat app")
	if _, err := chatapi.MigrateUp(ctx, e.catalogDSN, migrations.Options{}); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if e.cat, err = catalog.Open(ctx, e.catalogDSN, catalog.Options{}); err != nil {
		return nil, err
	}
	b, err := e.cat.Backend(ctx, migrations.MainBackend)
	if err != nil {
		return nil, err
	}
	e.servingUser, e.servingPassword, e.database = b.ServingUser, b.ServingPassword, b.SharedDatabase

	progress(fmt.Sprintf("initialising pgbench tables (scale %d)", scale))
	if err := e.initPgbench(ctx, scale); err != nil {
		return nil, err
	}
	progress(fmt.Sprintf("provisioning %d tenants (shared and schema tier)", n))
	if err := e.provision(ctx, n); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	if e.cat != nil {
		e.cat.Close()
	}
	e.cluster.Stop()
}

// initPgbench creates the pgbench tables in the shared-tier database as the
// superuser and lets the serving role use them, so that the direct, proxy
// and PgBouncer clients all run the same SQL on the same tables.
func (e *env) initPgbench(ctx context.Context, scale int) error {
	pgbench, err := pgcluster.Tool("pgbench")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, pgbench, "-i", "-q", "-s", strconv.Itoa(scale), e.cluster.DSN(e.database))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %w: %s", err, out)
	}
	return e.cluster.Exec(ctx, e.database,
		"GRANT SELECT, INSERT, UPDATE ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO "+
			router.QuoteIdent(e.servingUser))
}

// provision creates n tenants named t0001…, alternating shared and schema
// tier, four at a time, and resolves the context setup of each.
func (e *env) provision(ctx context.Context, n int) error {
	e.tenants = make([]*catalog.Tenant, n)
	e.setup = make([][]string, n)
	resolver := router.NewResolver(e.cat)
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		mu    sync.Mutex
		first error
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				tier := catalog.TierShared
				if i%2 == 1 {
					tier = catalog.TierSchema
				}
				c, err := e.cat.Create(ctx, catalog.CreateRequest{
					Subdomain: fmt.Sprintf("t%04d", i+1), Plan: catalog.PlanStandard, Tier: tier,
					AdminUser: tenantUser, AdminPassword: tenantPassword,
				})
				var rt *router.Route
				if err == nil {
					// The bench measures the proxy, not the plan's limits.
					_, err = e.cat.Update(ctx, c.Tenant.Subdomain, catalog.UpdateRequest{Limits: catalog.NoLimits()})
				}
				if err == nil {
					rt, err = resolver.Route(ctx, c.Tenant)
				}
				if err != nil {
					mu.Lock()
					first = errors.Join(first, err)
					mu.Unlock()
					return
				}
				e.tenants[i], e.setup[i] = c.Tenant, rt.Setup
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return fmt.Errorf("provision tenants: %w", first)
	}
	return ctx.Err()
}

// servingDSN is the serving role's DSN at host:port (PostgreSQL itself or
// PgBouncer) for database db.
func (e *env) servingDSN(addr, db string) string {
	return dsn(addr, e.servingUser, e.servingPassword, db)
}

// servingVerifier is the serving role's SCRAM verifier as PostgreSQL
// stores it, for PgBouncer's userlist: with the same verifier PgBouncer can
// log in to the server with the keys of the client's own SCRAM exchange.
func (e *env) servingVerifier(ctx context.Context) (string, error) {
	conn, err := pgx.Connect(ctx, e.cluster.DSN("postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var v string
	err = conn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", e.servingUser).Scan(&v)
	return v, err
}

func dsn(addr, user, password, db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     addr,
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// freeAddr returns a free 127.0.0.1 port for a child process to bind. The
// port could be taken before the child binds it; the child then fails to
// start and the run reports it.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
