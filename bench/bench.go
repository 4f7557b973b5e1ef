package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
)

// Options configure Run. The zero value (plus ProxyBinary) is the full run.
type Options struct {
	// ProxyBinary is the tenantproxy executable whose `serve` is measured;
	// required. The command passes its own executable.
	ProxyBinary string
	// OutDir receives bench.json and one SVG chart per scenario. Empty
	// means "bench-results".
	OutDir string
	// Quick is the one-minute smoke run: short measurements, one round,
	// small scales. Duration, Rounds and the scales still follow the
	// explicit fields when set.
	Quick bool
	// Duration is one measurement's length. Zero means 5 s (quick: 2 s:
	// pgbench's clock includes connecting, which on a busy machine can take
	// most of a second).
	Duration time.Duration
	// Rounds is how many times every measurement is repeated, interleaved
	// across targets. Zero means 3 (quick: 1).
	Rounds int
	// Scenarios picks scenarios by letter (a to h). Empty means all.
	Scenarios []string
	// Targets picks targets by name (see the Target constants). Empty
	// means every available one.
	Targets []string
	// ProxyProcs is GOMAXPROCS for the tenantproxy processes, to compare at
	// the CPU budget of single-threaded PgBouncer (1). Zero leaves Go's
	// default, every core.
	ProxyProcs int
	// Script is a pgbench script for scenario (a)'s custom case; it may
	// use :naccounts. Empty means a built-in read transaction.
	Script string
	// Progress receives a line per step. Nil means none.
	Progress io.Writer
}

// scales are the sizes of a run; quick runs use smaller ones.
type scales struct {
	pgbenchScale   int
	clients        []int // (a)
	rrConns        int   // (b): client connections, spread over the tenants
	rrTenants      []int // (b)
	idleConns      []int // (c)
	workers        int   // (b), (c): concurrently busy connections
	noisyClients   int   // (e)
	provision      int   // (f): tenants created per measurement
	tenants        int   // tenants provisioned at start
	maxConnections int   // PostgreSQL's max_connections
}

func (o *Options) scales() scales {
	if o.Quick {
		return scales{pgbenchScale: 1, clients: []int{8}, rrConns: 40, rrTenants: []int{1, 10, 40},
			idleConns: []int{50, 200}, workers: 8, noisyClients: 16, provision: 5, tenants: 40, maxConnections: 400}
	}
	return scales{pgbenchScale: 10, clients: []int{8, 64}, rrConns: 1000, rrTenants: []int{1, 100, 1000},
		idleConns: []int{100, 1000, 10000}, workers: 8, noisyClients: 64, provision: 50, tenants: 1000, maxConnections: 1500}
}

// Run brings up PostgreSQL, the targets and the tenants, runs the chosen
// scenarios and writes the JSON file and the charts into OutDir. It stops
// everything it started before returning. A measurement that fails is
// recorded in the report, not returned; errors are for a run that could not
// happen at all.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if opts.ProxyBinary == "" {
		return nil, errors.New("bench: no tenantproxy binary to measure")
	}
	if opts.OutDir == "" {
		opts.OutDir = "bench-results"
	}
	if opts.Duration <= 0 {
		opts.Duration = 5 * time.Second
		if opts.Quick {
			opts.Duration = 2 * time.Second
		}
	}
	if opts.Rounds <= 0 {
		opts.Rounds = 3
		if opts.Quick {
			opts.Rounds = 1
		}
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	letters, err := pickScenarios(opts.Scenarios)
	if err != nil {
		return nil, err
	}
	for _, name := range opts.Targets {
		if !slices.Contains([]string{TargetDirect, TargetSession, TargetTransaction, TargetTransactionOneProc, TargetPgBouncer}, name) {
			return nil, fmt.Errorf("bench: unknown target %q", name)
		}
	}
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return nil, err
	}
	raiseFileLimit()

	r := &runner{opts: opts, sc: opts.scales(), letters: letters, started: time.Now(), failures: map[string]int{}}
	r.report = &Report{Started: r.started.UTC(), Quick: opts.Quick, Rounds: opts.Rounds, Duration: opts.Duration.String(),
		Machine: Machine{CPUs: runtime.NumCPU(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH}}
	if err := r.bringUp(ctx); err != nil {
		r.tearDown()
		return nil, err
	}
	scens, err := r.scenarios(letters)
	if err != nil {
		r.tearDown()
		return nil, err
	}
	r.run(ctx, scens)
	r.tearDown()
	r.report.Took = time.Since(r.started).Round(time.Second).String()
	if err := ctx.Err(); err != nil {
		return r.report, err
	}
	return r.report, r.report.write(opts.OutDir)
}

// runner is one run's state.
type runner struct {
	opts    Options
	sc      scales
	letters []string // the scenarios to run
	started time.Time
	report  *Report
	dir     string // scratch: scripts, logs of the child processes
	env     *env
	targets []*target
	pgbench string
	// step and steps count measurements for the progress display.
	step, steps int
	// failures counts each target's consecutive failed measurements.
	failures map[string]int
}

// maxFailures consecutive failed measurements make the run skip a target
// for the rest of its cases: a target that hangs would otherwise cost its
// timeout in every case.
const maxFailures = 3

func (r *runner) progress(msg string) {
	fmt.Fprintf(r.opts.Progress, "[%s] %s\n", time.Since(r.started).Round(time.Second), msg)
}

func (r *runner) wants(target string) bool {
	return len(r.opts.Targets) == 0 || slices.Contains(r.opts.Targets, target)
}

func (r *runner) bringUp(ctx context.Context) error {
	var err error
	if r.pgbench, err = pgcluster.Tool("pgbench"); err != nil {
		return err
	}
	if r.dir, err = os.MkdirTemp("", "tenantproxy-bench-"); err != nil {
		return err
	}
	// PgBouncer runs as the postgres user when the bench runs as root and
	// must reach its files in here.
	if err := os.Chmod(r.dir, 0o755); err != nil {
		return err
	}
	if r.env, err = startEnv(ctx, r.sc.maxConnections, r.sc.tenants, r.sc.pgbenchScale, r.progress); err != nil {
		return err
	}
	r.report.Machine.PostgreSQL = r.serverVersion(ctx)
	// Direct clients and the session-mode proxy need one server connection
	// per client; leave PostgreSQL a margin for the catalog and pgbench.
	perClient := r.sc.maxConnections - 200
	if r.wants(TargetDirect) {
		r.targets = append(r.targets, &target{name: TargetDirect, addr: r.env.cluster.Addr(), maxClients: perClient, stop: func() error { return nil }})
	}
	if r.opts.ProxyProcs > 0 && (r.wants(TargetSession) || r.wants(TargetTransaction)) {
		r.note(fmt.Sprintf("tenantproxy ran with GOMAXPROCS=%d (--proxy-procs)", r.opts.ProxyProcs))
	}
	if r.wants(TargetSession) {
		r.progress("starting tenantproxy (session mode)")
		t, err := startProxy(ctx, r.opts.ProxyBinary, r.opts.ProxyProcs, TargetSession, r.env, filepath.Join(r.dir, "tp-session.log"), perClient,
			"--pool-max-conns", fmt.Sprint(perClient))
		if err != nil {
			return err
		}
		r.targets = append(r.targets, t)
	}
	if r.wants(TargetTransaction) {
		if proxyHasPoolMode(ctx, r.opts.ProxyBinary) {
			r.progress("starting tenantproxy (transaction mode)")
			t, err := startProxy(ctx, r.opts.ProxyBinary, r.opts.ProxyProcs, TargetTransaction, r.env, filepath.Join(r.dir, "tp-transaction.log"), 1<<20,
				transactionFlags...)
			if err != nil {
				return err
			}
			r.targets = append(r.targets, t)
		} else {
			r.note("tp-transaction skipped: this tenantproxy has no " + poolModeFlag + " flag yet (transaction pooling, issue #4)")
		}
	}
	if err := r.startOneProc(ctx); err != nil {
		return err
	}
	if r.wants(TargetPgBouncer) {
		r.progress("starting PgBouncer (transaction mode)")
		maxIdle := slices.Max(r.sc.idleConns)
		t, err := startPgBouncer(ctx, r.env, r.dir, maxIdle)
		switch {
		case errors.Is(err, ErrNoPgBouncer):
			r.note(err.Error())
		case err != nil:
			return err
		default:
			r.targets = append(r.targets, t)
			if out, err := exec.Command("pgbouncer", "--version").Output(); err == nil {
				r.report.Machine.PgBouncer = strings.SplitN(string(out), "\n", 2)[0]
			}
		}
	}
	for _, t := range r.targets {
		r.report.Targets = append(r.report.Targets, t.name)
	}
	if len(r.targets) == 0 {
		return errors.New("bench: no target to measure")
	}
	return nil
}

func (r *runner) note(s string) {
	r.report.Notes = append(r.report.Notes, s)
	r.progress("note: " + s)
}

func (r *runner) serverVersion(ctx context.Context) string {
	conn, err := pgx.Connect(ctx, r.env.cluster.DSN("postgres"))
	if err != nil {
		return ""
	}
	defer conn.Close(ctx)
	var v string
	conn.QueryRow(ctx, "SHOW server_version").Scan(&v)
	return v
}

func (r *runner) tearDown() {
	for _, t := range r.targets {
		if err := t.stop(); err != nil {
			r.note(err.Error())
		}
	}
	r.targets = nil
	if r.env != nil {
		r.env.close()
	}
	if r.dir != "" {
		os.RemoveAll(r.dir)
	}
}

// run measures every case of scens on every target, round after round,
// each round starting one target later, so that drift and warm-up hit all
// targets alike.
func (r *runner) run(ctx context.Context, scens []*scenario) {
	results := map[string]*Result{}
	for _, s := range scens {
		for _, c := range s.cases {
			r.steps += len(r.targetsOf(s, c)) * r.opts.Rounds
		}
	}
	for round := range r.opts.Rounds {
		for _, s := range scens {
			for _, c := range s.cases {
				ts := r.targetsOf(s, c)
				for k := range ts {
					if ctx.Err() != nil {
						return
					}
					t := ts[(k+round)%len(ts)]
					r.measure(ctx, s, c, t, round, results)
				}
			}
		}
	}
}

// targetsOf is the targets a case of s runs on: those not kept to another
// scenario, or a stand-in for cases that measure no target (provisioning).
func (r *runner) targetsOf(s *scenario, c *benchCase) []*target {
	if c.noTarget {
		return []*target{{name: "catalog"}}
	}
	var out []*target
	for _, t := range r.targets {
		if t.only == "" || t.only == s.id {
			out = append(out, t)
		}
	}
	return out
}

func (r *runner) measure(ctx context.Context, s *scenario, c *benchCase, t *target, round int, results map[string]*Result) {
	r.step++
	label := fmt.Sprintf("(%s) %s · %s · round %d/%d", s.id, c.name, t.name, round+1, r.opts.Rounds)
	get := func(m metric) *Result {
		key := s.id + "\x00" + c.name + "\x00" + t.name + "\x00" + m.name
		res := results[key]
		if res == nil {
			res = &Result{Scenario: s.id, Case: c.name, Target: t.name, Metric: m.name, Unit: m.unit, HigherIsBetter: m.higher}
			results[key] = res
			r.report.Results = append(r.report.Results, res)
		}
		return res
	}
	// Every metric's result exists from the first measurement on, so the
	// table lists metrics in the case's order.
	for _, m := range c.metrics {
		get(m)
	}
	skip := c.skip
	if r.failures[t.name] >= maxFailures {
		skip = func(*target) string { return fmt.Sprintf("%d measurements in a row failed", maxFailures) }
	}
	if skip != nil {
		if why := skip(t); why != "" {
			for _, m := range c.metrics {
				get(m).Skipped = why
			}
			r.progress(fmt.Sprintf("%3d/%d %s: skipped (%s)", r.step, r.steps, label, why))
			return
		}
	}
	vals, err := c.run(ctx, t)
	if err != nil {
		if log := t.logTail(); log != "" {
			err = fmt.Errorf("%w; end of %s's log: %s", err, t.name, log)
		}
		for _, m := range c.metrics {
			get(m).Errors = append(get(m).Errors, err.Error())
		}
		if r.failures[t.name]++; r.failures[t.name] == maxFailures {
			r.note(fmt.Sprintf("%s skipped for the rest of the run after %d failed measurements in a row; last: %s", t.name, maxFailures, firstLine(err.Error(), 200)))
		}
		r.progress(fmt.Sprintf("%3d/%d %s: failed: %v", r.step, r.steps, label, err))
		return
	}
	r.failures[t.name] = 0
	var shown []string
	for i, m := range c.metrics {
		switch {
		case i >= len(vals) || math.IsNaN(vals[i]):
			get(m).Skipped = "not measured for this target"
		default:
			get(m).add(vals[i])
			shown = append(shown, fmt.Sprintf("%s %s", formatValue(vals[i]), m.unit))
		}
	}
	r.progress(fmt.Sprintf("%3d/%d %s: %s", r.step, r.steps, label, strings.Join(shown, ", ")))
}

// raiseFileLimit lifts the soft open-file limit to the hard one before any
// child starts, so that the load generator and PgBouncer (which inherits
// it) can hold the connection-scale scenario's sockets. The Go runtime
// raises its own limit but restores the original for children.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
