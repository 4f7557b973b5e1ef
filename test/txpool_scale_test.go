package test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// errWrongTenant marks a result that shows another tenant's rows: the one
// failure these tests never tolerate, whatever else goes wrong.
var errWrongTenant = errors.New("wrong tenant's rows")

// ownRowsChecked runs the row check in the simple protocol, in pgx's
// prepared (statement cache) mode, and inside an explicit transaction.
func ownRowsChecked(ctx context.Context, conn *pgx.Conn, sub string) error {
	var name string
	err := conn.QueryRow(ctx, "SELECT string_agg(username, ',') FROM users", pgx.QueryExecModeSimpleProtocol).Scan(&name)
	if err != nil {
		return err
	}
	if name != "u-"+sub {
		return fmt.Errorf("%w: tenant %s sees %q (simple protocol)", errWrongTenant, sub, name)
	}
	if err := onlyOwnUsers(ctx, conn, sub); err != nil {
		if strings.Contains(err.Error(), " sees users ") {
			return fmt.Errorf("%w: %v", errWrongTenant, err)
		}
		return err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := tx.QueryRow(ctx, "SELECT string_agg(username, ',') FROM users WHERE username LIKE $1", "u-%").Scan(&name); err != nil {
		return err
	}
	if name != "u-"+sub {
		return fmt.Errorf("%w: tenant %s sees %q (in a transaction)", errWrongTenant, sub, name)
	}
	return tx.Commit(ctx)
}

// createTenants provisions n tenants per tier (shared and schema) with one
// user row each, and returns their subdomains.
func (e *txEnv) createTenants(t *testing.T, n int) []string {
	t.Helper()
	ctx := ctxT(t)
	var subs []string
	for i := range n {
		subs = append(subs, fmt.Sprintf("sh%03d", i), fmt.Sprintf("sc%03d", i))
	}
	var g errgroup.Group
	g.SetLimit(4)
	for _, sub := range subs {
		plan, tier := catalog.PlanFree, catalog.TierShared
		if strings.HasPrefix(sub, "sc") {
			plan, tier = catalog.PlanStandard, catalog.TierSchema
		}
		g.Go(func() error {
			if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: sub, Plan: plan, Tier: tier, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
				return fmt.Errorf("create %s: %w", sub, err)
			}
			conn, err := pgx.Connect(ctx, dsn(e.addr, "alice."+sub, tenantPassword))
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			_, err = conn.Exec(ctx, "INSERT INTO users (username) VALUES ($1)", "u-"+sub)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	return subs
}

// proxyBackends picks the proxy's server connections out of
// pg_stat_activity by their roles, the serving and tenant roles, none a
// superuser as the tests' own and the catalog's connections are: a held
// connection has its client's application_name (empty when the client names
// none), so the pool's "tenantproxy" marks only idle ones.
const proxyBackends = `SELECT a.pid FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
	WHERE a.backend_type = 'client backend' AND NOT r.rolsuper`

// serverConns counts the proxy's connections to the cluster.
func (e *txEnv) serverConns(ctx context.Context) (int, error) {
	conn, err := pgx.Connect(ctx, e.cluster.DSN("postgres"))
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM ("+proxyBackends+") p").Scan(&n)
	return n, err
}

func TestTxPoolTwoThousandClientsOfTwoHundredTenantsOnTwentyServerConnections(t *testing.T) {
	clients, perTier := 2000, 100
	if raceEnabled {
		clients, perTier = 400, 20
	}
	if testing.Short() {
		t.Skip("-short: 2,000 clients")
	}
	raiseFileLimit(t, 2*clients+1000)
	// Two pools (the shared tier's database and the schema tier's), ten
	// server connections each.
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 10},
		proxy.Config{StartupTimeout: 3 * time.Minute})
	subs := e.createTenants(t, perTier)
	ctx := ctxT(t)

	conns := make([]*pgx.Conn, clients)
	var g errgroup.Group
	g.SetLimit(64)
	for i := range conns {
		g.Go(func() error {
			c, err := pgx.Connect(ctx, dsn(e.addr, "alice."+subs[i%len(subs)], tenantPassword))
			conns[i] = c
			return err
		})
	}
	err := g.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.Background())
			}
		}
	})
	if err != nil {
		t.Fatalf("connect %d clients: %v", clients, err)
	}

	var peak atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if n, err := e.serverConns(ctx); err == nil && int64(n) > peak.Load() {
				peak.Store(int64(n))
			}
		}
	}()

	start := time.Now()
	const rounds = 3
	var checked atomic.Int64
	var run errgroup.Group
	for i, c := range conns {
		run.Go(func() error {
			for range rounds {
				if err := ownRowsChecked(ctx, c, subs[i%len(subs)]); err != nil {
					return fmt.Errorf("client %d: %w", i, err)
				}
				checked.Add(3)
			}
			return nil
		})
	}
	err = run.Wait()
	close(stop)
	sampler.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if p := peak.Load(); p > 20 {
		t.Fatalf("%d server connections at peak; want at most 20", p)
	}
	t.Logf("%d clients of %d tenants: %d row-checked queries in %s on at most %d server connections",
		clients, len(subs), checked.Load(), time.Since(start).Round(time.Millisecond), peak.Load())
}

// raiseFileLimit makes sure this process may hold need descriptors: the
// clients' sockets and the proxy's both ends live in it. The soft limit
// is raised up to the hard one (no privilege needed); a hard limit too
// low is a failure that says so, not a skip.
func raiseFileLimit(t *testing.T, need int) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= uint64(need) {
		return
	}
	if lim.Max < uint64(need) {
		t.Fatalf("open file limit: hard limit %d, need %d (raise it with ulimit -Hn)", lim.Max, need)
	}
	old := lim.Cur
	lim.Cur = uint64(need)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lim.Cur = old
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	})
}

func TestTxPoolSurvivesTerminatedBackendsAndRestartWithoutWrongTenantReuse(t *testing.T) {
	e := newTxEnv(t, pgcluster.Options{}, pool.Config{MaxConnsPerKey: 4}, proxy.Config{})
	subs := []string{"acme", "globex", "initech"}
	e.seedUsers(t, subs...)
	ctx := ctxT(t)

	var violations, failures, successes atomic.Int64
	var firstViolation atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 24 {
		sub := subs[i%len(subs)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(context.Background())
				}
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if conn == nil {
					c, err := pgx.Connect(ctx, dsn(e.addr, "alice."+sub, tenantPassword))
					if err != nil {
						failures.Add(1)
						time.Sleep(50 * time.Millisecond)
						continue
					}
					conn = c
				}
				qctx, cancel := retryCtx(ctx)
				err := ownRowsChecked(qctx, conn, sub)
				cancel()
				switch {
				case errors.Is(err, errWrongTenant):
					violations.Add(1)
					firstViolation.CompareAndSwap(nil, err.Error())
				case err != nil:
					failures.Add(1)
					// The session may have ended with the server
					// connection: start a new one, as an application's
					// pool would.
					if conn.IsClosed() || conn.PgConn().IsBusy() {
						conn.Close(context.Background())
						conn = nil
					}
				default:
					successes.Add(1)
				}
			}
		}()
	}
	waitFor := func(what string, min int64) {
		t.Helper()
		target := successes.Load() + min
		deadline := time.Now().Add(30 * time.Second)
		for successes.Load() < target {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("%s: successes stuck at %d (failures %d)", what, successes.Load(), failures.Load())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("warm-up", 200)

	// Every pooled connection terminated under load.
	if err := e.cluster.Exec(ctx, "postgres", "SELECT pg_terminate_backend(pid) FROM ("+proxyBackends+") p"); err != nil {
		t.Fatal(err)
	}
	waitFor("after pg_terminate_backend", 200)
	afterKill := failures.Load()

	// The server restarted under load.
	if err := e.cluster.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("after restart", 200)
	close(stop)
	wg.Wait()
	if v := violations.Load(); v > 0 {
		t.Fatalf("%d results with another tenant's rows; first: %v", v, firstViolation.Load())
	}
	t.Logf("%d checked rounds succeeded; %d failed around the terminations, %d around the restart", successes.Load(), afterKill, failures.Load()-afterKill)
}
