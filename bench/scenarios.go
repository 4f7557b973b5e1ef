package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// scenario is one of (a) to (h): cases measured on every target.
type scenario struct {
	id, title string
	cases     []*benchCase
}

// benchCase is one measurement: run returns one value per metric (NaN when
// the target has no such value, like the memory of direct PostgreSQL).
type benchCase struct {
	name    string
	metrics []metric
	// noTarget cases measure the catalog, not a client path.
	noTarget bool
	// skip says why a target cannot run the case, or "".
	skip func(t *target) string
	run  func(ctx context.Context, t *target) ([]float64, error)
}

type metric struct {
	name, unit string
	higher     bool
}

var (
	metricTPS     = metric{"throughput", "tps", true}
	metricLatency = metric{"latency", "ms", false}
	// metricCPU is the target process's CPU time per transaction: on a
	// machine where client, proxy and server share the cores, it is what
	// decides the proxy's throughput.
	metricCPU = metric{"proxy CPU per transaction", "µs", false}
)

// Titles of the scenarios, in run order.
var scenarioTitles = map[string]string{
	"a": "per-query overhead (pgbench)",
	"b": "tenant context switching (round-robin over tenants)",
	"c": "connection scale (mostly idle connections)",
	"d": "connect rate with SCRAM (pgbench -C)",
	"e": "noisy neighbour (quiet tenant's latency)",
	"f": "provisioning rate (schema-tier tenants)",
	"g": "added latency at one client (point select, simple protocol)",
	"h": "scaling with cores (transaction mode at every core and at one)",
}

func pickScenarios(ids []string) ([]string, error) {
	all := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	if len(ids) == 0 {
		return all, nil
	}
	var out []string
	for _, id := range all {
		if slices.Contains(ids, id) {
			out = append(out, id)
		}
	}
	for _, id := range ids {
		if !slices.Contains(all, id) {
			return nil, fmt.Errorf("bench: unknown scenario %q (want a to h)", id)
		}
	}
	return out, nil
}

func (r *runner) scenarios(ids []string) ([]*scenario, error) {
	build := map[string]func() (*scenario, error){
		"a": r.overhead, "b": r.contextSwitching, "c": r.connectionScale,
		"d": r.connectRate, "e": r.noisyNeighbour, "f": r.provisioning,
		"g": r.addedLatency, "h": r.coreScaling,
	}
	var out []*scenario
	for _, id := range ids {
		s, err := build[id]()
		if err != nil {
			return nil, err
		}
		s.id, s.title = id, scenarioTitles[id]
		out = append(out, s)
	}
	return out, nil
}

// pgbenchDSN is the connection string pgbench uses for t: tenant t0001
// (shared tier) through a proxy, the serving role otherwise. The pgbench
// tables are outside row-level security, so every target reads the same
// rows; the proxy still does all its per-tenant work.
func (r *runner) pgbenchDSN(t *target) string {
	d, _ := t.clientDSN(r.env, 0)
	return d
}

// (a) pgbench select-only in three protocols, TPC-B-like in the simple
// and extended ones, and a custom script.
func (r *runner) overhead() (*scenario, error) {
	s := &scenario{}
	script := r.opts.Script
	if script == "" {
		script = filepath.Join(r.dir, "custom.sql")
		// A read transaction of a point look-up and a short range
		// aggregate: several messages per transaction, as applications send.
		body := "\\set aid random(1, :naccounts - 100)\n" +
			"BEGIN;\n" +
			"SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n" +
			"SELECT bid, sum(abalance) FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 100 GROUP BY bid;\n" +
			"END;\n"
		if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	naccounts := "naccounts=" + strconv.Itoa(100000*r.sc.pgbenchScale)
	modes := []string{"simple", "extended", "prepared"}
	if r.opts.Quick {
		modes = []string{"simple", "prepared"}
	}
	for _, mode := range modes {
		for _, c := range r.sc.clients {
			var skip func(*target) string
			if mode == "prepared" {
				skip = func(t *target) string {
					if t.name == TargetPgBouncer {
						return "PgBouncer 1.18 keeps no prepared statements in transaction mode"
					}
					return ""
				}
			}
			s.cases = append(s.cases, r.pgbenchCase(fmt.Sprintf("select-only -M %s c=%d", mode, c), skip, "-S", "-M", mode, "-c", strconv.Itoa(c), "-j", pgbenchThreads(c)))
		}
	}
	// TPC-B-like in both protocols PgBouncer pools, at every client count:
	// its five statements per transaction weigh the relay differently from
	// -S's one.
	for _, mode := range modes {
		if mode == "prepared" {
			continue
		}
		for _, c := range r.sc.clients {
			s.cases = append(s.cases, r.pgbenchCase(fmt.Sprintf("TPC-B-like -M %s c=%d", mode, c), nil, "-M", mode, "-c", strconv.Itoa(c), "-j", pgbenchThreads(c)))
		}
	}
	c := r.sc.clients[0]
	s.cases = append(s.cases, r.pgbenchCase(fmt.Sprintf("custom script c=%d", c), nil, "-M", "simple", "-c", strconv.Itoa(c), "-j", pgbenchThreads(c),
		"-f", script, "-D", naccounts))
	return s, nil
}

// pgbenchCase runs pgbench with args on a target and reports its
// throughput, mean latency and the target process's CPU time per
// transaction.
func (r *runner) pgbenchCase(name string, skip func(*target) string, args ...string) *benchCase {
	return &benchCase{
		name: name, metrics: []metric{metricTPS, metricLatency, metricCPU}, skip: skip,
		run: func(ctx context.Context, t *target) ([]float64, error) {
			cpu, err := t.cpuSeconds()
			if err != nil {
				return nil, err
			}
			res, err := runPgbench(ctx, r.pgbench, r.pgbenchDSN(t), r.opts.Duration, args...)
			if err != nil {
				return nil, err
			}
			perTx := math.NaN()
			if !math.IsNaN(cpu) && res.transactions > 0 {
				after, err := t.cpuSeconds()
				if err != nil {
					return nil, err
				}
				perTx = (after - cpu) / res.transactions * 1e6
			}
			return []float64{res.tps, res.latencyMS, perTx}, nil
		},
	}
}

// rrQuery reads a table of the tenant's own data model, so it works in
// every tier and only in the tenant's context (row-level security in the
// shared tier, the tenant's schema in the schema tier).
const rrQuery = "SELECT count(*) FROM channels"

// (b) the same client connections spread over 1, 100 or 1,000 tenants,
// used round-robin: in transaction mode every transaction may land on a
// server connection in another tenant's context. One case measures every
// spread in turn, so that each ratio to one tenant comes from the same
// round, minutes apart at most, rather than from separate cases.
func (r *runner) contextSwitching() (*scenario, error) {
	n := r.sc.rrConns
	var spreads []int
	for _, k := range r.sc.rrTenants {
		spreads = append(spreads, min(k, len(r.env.tenants)))
	}
	tenantsLabel := func(k int) string {
		if k == 1 {
			return "1 tenant"
		}
		return withThousands(strconv.Itoa(k)) + " tenants"
	}
	var metrics []metric
	for _, k := range spreads {
		metrics = append(metrics, metric{"throughput, " + tenantsLabel(k), "tps", true})
	}
	for _, k := range spreads[1:] {
		metrics = append(metrics, metric{tenantsLabel(k) + " ÷ " + tenantsLabel(spreads[0]), "x", true})
	}
	return &scenario{cases: []*benchCase{{
		name:    fmt.Sprintf("%s conns, %s", withThousands(strconv.Itoa(n)), rrQuery),
		metrics: metrics,
		skip: func(t *target) string {
			if t.name == TargetPgBouncer {
				return "PgBouncer sets no tenant context"
			}
			if n > t.maxClients {
				return fmt.Sprintf("needs %d server connections", n)
			}
			return ""
		},
		run: func(ctx context.Context, t *target) ([]float64, error) {
			var vals []float64
			for _, k := range spreads {
				tps, err := r.roundRobinTenants(ctx, t, n, k)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", tenantsLabel(k), err)
				}
				vals = append(vals, tps)
			}
			for _, tps := range vals[1:] {
				vals = append(vals, tps/vals[0])
			}
			return vals, nil
		},
	}}}, nil
}

// roundRobinTenants opens n connections to t spread over the first k
// tenants and measures rrQuery round-robin over them.
func (r *runner) roundRobinTenants(ctx context.Context, t *target, n, k int) (float64, error) {
	if err := r.env.waitForBackends(ctx, t, n); err != nil {
		return 0, err
	}
	conns, err := openConns(ctx, n, 32, func(j int) (string, []string) { return t.clientDSN(r.env, j%k) })
	if err != nil {
		return 0, err
	}
	defer closeConns(conns)
	return roundRobin(ctx, conns, r.sc.workers, r.opts.Duration, rrQuery)
}

// (c) many connections open, a few busy at a time, and the memory of the
// process that holds them. Process targets are restarted first, so that
// their RSS is this case's and not the high-water mark of an earlier one.
func (r *runner) connectionScale() (*scenario, error) {
	s := &scenario{}
	for _, n := range r.sc.idleConns {
		s.cases = append(s.cases, &benchCase{
			name: fmt.Sprintf("%d conns", n),
			metrics: []metric{metricTPS, {"RSS", "MB", false}, {"RSS per connection", "KB", false},
				{"connections opened", "conn/s", true}},
			skip: func(t *target) string {
				if n > t.maxClients {
					return fmt.Sprintf("one server connection per client; %d is past max_connections", n)
				}
				return ""
			},
			run: func(ctx context.Context, t *target) ([]float64, error) {
				base := math.NaN()
				if t.child != nil {
					if err := t.restart(ctx); err != nil {
						return nil, err
					}
					b, err := rssBytes(t.proc)
					if err != nil {
						return nil, err
					}
					base = float64(b)
				}
				if err := r.env.waitForBackends(ctx, t, n); err != nil {
					return nil, err
				}
				start := time.Now()
				conns, err := openConns(ctx, n, 32, func(j int) (string, []string) {
					if t.tenantAware {
						d, _ := t.clientDSN(r.env, j%len(r.env.tenants))
						return d, nil
					}
					return r.env.servingDSN(t.addr, r.env.database), nil
				})
				if err != nil {
					return nil, err
				}
				opened := float64(n) / time.Since(start).Seconds()
				defer closeConns(conns)
				rss, perConn := math.NaN(), math.NaN()
				if t.proc != nil {
					b, err := rssBytes(t.proc)
					if err != nil {
						return nil, err
					}
					rss, perConn = float64(b)/(1<<20), (float64(b)-base)/float64(n)/(1<<10)
				}
				tps, err := roundRobin(ctx, conns, r.sc.workers, r.opts.Duration, "SELECT 1")
				return []float64{tps, rss, perConn, opened}, err
			},
		})
	}
	return s, nil
}

// (d) a new connection, with SCRAM, for every transaction: pgbench -C as
// users run it, where libpq's client side of SCRAM and pgbench's serial
// connects per thread weigh heavily, and the Go client with many connects in
// flight, which finds how many connections per second the target takes.
func (r *runner) connectRate() (*scenario, error) {
	script := filepath.Join(r.dir, "select1.sql")
	if err := os.WriteFile(script, []byte("SELECT 1;\n"), 0o644); err != nil {
		return nil, err
	}
	c := r.sc.clients[0]
	const parallel = 32
	connRate := metric{"connections", "conn/s", true}
	return &scenario{cases: []*benchCase{{
		name:    fmt.Sprintf("pgbench -C, SELECT 1, c=%d", c),
		metrics: []metric{connRate, metricLatency},
		run: func(ctx context.Context, t *target) ([]float64, error) {
			res, err := runPgbench(ctx, r.pgbench, r.pgbenchDSN(t), r.opts.Duration,
				"-C", "-M", "simple", "-c", strconv.Itoa(c), "-j", pgbenchThreads(c), "-f", script)
			return []float64{res.tps, res.latencyMS}, err
		},
	}, {
		name:    fmt.Sprintf("Go client: connect, SELECT 1, close, %d in flight", parallel),
		metrics: []metric{connRate},
		run: func(ctx context.Context, t *target) ([]float64, error) {
			rate, err := connectLoop(ctx, r.pgbenchDSN(t), parallel, r.opts.Duration)
			return []float64{rate}, err
		},
	}}}, nil
}

// noisyQuery is an index range scan of a couple of thousand rows, about a
// millisecond: many of them at once keep every core busy.
const noisyQuery = "SELECT count(*) FROM pgbench_accounts WHERE aid <= 2000"

// (e) a quiet tenant's latency alone, then beside a tenant running many
// clients flat out.
func (r *runner) noisyNeighbour() (*scenario, error) {
	n := r.sc.noisyClients
	const every = 5 * time.Millisecond
	return &scenario{cases: []*benchCase{{
		name: fmt.Sprintf("quiet tenant, 1 query per %s, beside %d noisy clients", every, n),
		metrics: []metric{{"quiet p99 alone", "ms", false}, {"quiet p99 beside noisy", "ms", false},
			{"p99 slowdown", "x", false}, {"noisy throughput", "tps", true}},
		skip: func(t *target) string {
			if n+1 > t.maxClients {
				return fmt.Sprintf("needs %d server connections", n+1)
			}
			return ""
		},
		run: func(ctx context.Context, t *target) ([]float64, error) {
			// Tenants t0001 (noisy) and t0003 (quiet) are both in the
			// shared tier, so through the proxy they share one pool.
			quietTenant := min(2, len(r.env.tenants)-1)
			quiet, err := openConns(ctx, 1, 1, func(int) (string, []string) {
				d, _ := t.clientDSN(r.env, quietTenant)
				return d, nil
			})
			if err != nil {
				return nil, err
			}
			defer closeConns(quiet)
			alone, err := paced(ctx, quiet[0], every, r.opts.Duration, "SELECT 1")
			if err != nil {
				return nil, err
			}
			noisy, err := openConns(ctx, n, 16, func(int) (string, []string) { return r.pgbenchDSN(t), nil })
			if err != nil {
				return nil, err
			}
			defer closeConns(noisy)
			var (
				wg       sync.WaitGroup
				noisyTPS float64
				noisyErr error
			)
			wg.Add(1)
			go func() {
				defer wg.Done()
				noisyTPS, noisyErr = roundRobin(ctx, noisy, n, r.opts.Duration+200*time.Millisecond, noisyQuery)
			}()
			// Let the noisy clients get going before measuring.
			time.Sleep(100 * time.Millisecond)
			beside, err := paced(ctx, quiet[0], every, r.opts.Duration, "SELECT 1")
			wg.Wait()
			if err != nil {
				return nil, err
			}
			if noisyErr != nil {
				return nil, noisyErr
			}
			p99a, p99b := percentile(alone, 0.99), percentile(beside, 0.99)
			return []float64{p99a, p99b, p99b / p99a, noisyTPS}, nil
		},
	}}}, nil
}

// (f) schema-tier tenants created one after another through the catalog:
// role, schema, tenant migrations, admin user.
func (r *runner) provisioning() (*scenario, error) {
	n := r.sc.provision
	return &scenario{cases: []*benchCase{{
		name:     fmt.Sprintf("create %d schema-tier tenants, one at a time", n),
		metrics:  []metric{{"tenants created", "tenants/s", true}},
		noTarget: true,
		run: func(ctx context.Context, _ *target) ([]float64, error) {
			start := time.Now()
			for range n {
				i := r.env.provisioned.Add(1)
				if _, err := r.env.cat.Create(ctx, catalog.CreateRequest{
					Subdomain: fmt.Sprintf("prov%05d", i), Plan: catalog.PlanStandard,
					AdminUser: tenantUser, AdminPassword: tenantPassword,
				}); err != nil {
					return nil, err
				}
			}
			return []float64{float64(n) / time.Since(start).Seconds()}, nil
		},
	}}}, nil
}

// waitForBackends waits until PostgreSQL has room for the server
// connections t will open for n clients: idle server connections of the
// previous target's turn close after the proxy's idle timeout.
func (e *env) waitForBackends(ctx context.Context, t *target, n int) error {
	need := n
	if t.pooled {
		need = min(n, 40)
	}
	conn, err := pgconn.Connect(ctx, e.cluster.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var maxConns int
	for deadline := time.Now().Add(20 * time.Second); ; {
		results, err := conn.Exec(ctx, "SELECT current_setting('max_connections')::int, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").ReadAll()
		if err != nil {
			return err
		}
		row := results[0].Rows[0]
		maxConns, _ = strconv.Atoi(string(row[0]))
		used, _ := strconv.Atoi(string(row[1]))
		if used+need+20 <= maxConns {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("PostgreSQL still has %d of %d connections in use; %d more are needed", used, maxConns, need)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
