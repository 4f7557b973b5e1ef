package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
)

// suite is one driver's own test suite, run from its module source.
type suite struct {
	name   string
	module string
	env    func(conninfo) []string
	// direct is the baseline's login; database is the one named
	// through the proxy, where any name reaches the tenant's own.
	direct   func(*environment) conninfo
	database string
}

var suiteByName = map[string]suite{
	// pgx reads its connection from PGX_TEST_DATABASE; the TCP variant
	// enables the pgconn tests that insist on TCP. The other
	// PGX_TEST_*_CONN_STRING (TLS, md5, plain password, PgBouncer) stay
	// unset: those tests skip, directly and through the proxy alike.
	"pgx": {name: "pgx", module: "github.com/jackc/pgx/v5", env: func(c conninfo) []string {
		return []string{"PGX_TEST_DATABASE=" + c.keywordValue(), "PGX_TEST_TCP_CONN_STRING=" + c.keywordValue()}
	}, direct: func(e *environment) conninfo { return e.direct }, database: "pgx_test"},
	"pq": {name: "pq", module: "github.com/lib/pq", env: conninfo.pqEnv,
		direct: func(e *environment) conninfo { return e.directPQ }, database: pqDatabase},
}

// tally is one suite run's outcome, counted over tests and subtests as
// go test -json reports them.
type tally struct {
	suite, target           string
	passed, failed, skipped int
}

// maxReruns bounds how often a package whose test binary died (a test
// that panicked or hung) is run again without the tests that killed it.
const maxReruns = 3

// runSuite runs go test -json over a writable copy of the suite's module
// source and writes the failing tests' output to report. A test that
// panics or hangs ends its package's binary and with it every test not yet
// run: that package runs again with the dead tests skipped (and counted
// failed), so that the others are measured too.
func runSuite(ctx context.Context, s suite, target string, c conninfo, o options, report string) (tally, error) {
	dir, err := moduleCopy(ctx, s.module)
	if err != nil {
		return tally{}, err
	}
	defer os.RemoveAll(dir)
	res := newResults()
	// The raw events too, for what the report's tails leave out (a
	// goroutine dump, a parallel test's interleaved output).
	raw, err := os.Create(strings.TrimSuffix(report, ".txt") + ".jsonl")
	if err != nil {
		return tally{}, err
	}
	defer raw.Close()
	res.raw = raw
	if err := goTest(ctx, s, c, o, filepath.Join(dir, "src"), res, nil, "./..."); err != nil {
		return tally{}, fmt.Errorf("%s %s: %w", s.name, target, err)
	}
	for range maxReruns {
		dead := res.takeDead()
		if len(dead) == 0 {
			break
		}
		for pkg, tests := range dead {
			fmt.Fprintf(os.Stderr, "driversuites: %s %s: %s died in %s; running the rest again\n", s.name, target, pkg, strings.Join(tests, ", "))
			if err := goTest(ctx, s, c, o, filepath.Join(dir, "src"), res, tests, pkg); err != nil {
				return tally{}, fmt.Errorf("%s %s: %w", s.name, target, err)
			}
		}
	}
	t := res.tally()
	t.suite, t.target = s.name, target
	return t, writeReport(report, res.failures())
}

// goTest runs go test -json on pkg, skipping the top-level tests skip,
// into res.
func goTest(ctx context.Context, s suite, c conninfo, o options, dir string, res *results, skip []string, pkg string) error {
	args := []string{"test", "-json", "-count=1", "-timeout", o.timeout}
	if o.run != "" {
		args = append(args, "-run", o.run)
	}
	if len(skip) > 0 {
		args = append(args, "-skip", "^("+strings.Join(skip, "|")+")$")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	cmd.Dir = dir
	cmd.Env = append(withoutPostgresEnv(os.Environ()), s.env(c)...)
	// The test binary is go test's child: on an interrupt both go, as one
	// process group, or the binary would outlive the run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	events := res.read(stdout)
	// go test exits non-zero whenever a test fails, which is what is
	// being measured; only a run that produced no event is an error.
	if err := cmd.Wait(); err != nil && events == 0 {
		return fmt.Errorf("go test %s: %w", pkg, err)
	}
	return nil
}

// moduleCopy copies the module, at the version this repository requires,
// out of the read-only module cache into a temporary directory's src.
func moduleCopy(ctx context.Context, module string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "mod", "download", "-json", module).Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w", module, err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "driversuites-")
	if err != nil {
		return "", err
	}
	src := filepath.Join(dir, "src")
	if err := os.CopyFS(src, os.DirFS(m.Dir)); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	// CopyFS keeps the cache's read-only modes; some tests write files.
	err = filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		return os.Chmod(path, mode)
	})
	return dir, err
}

// withoutPostgresEnv drops libpq's and pgx's variables from env, so that
// only the suite's own configuration reaches it.
func withoutPostgresEnv(env []string) []string {
	var kept []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "PG") {
			kept = append(kept, kv)
		}
	}
	return kept
}

// event is a line of go test -json (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// results are the outcomes of one suite's tests, by package and test,
// over a first run and the reruns of packages that died.
type results struct {
	outcome map[string]string   // "package test" → pass, fail or skip
	output  map[string][]string // the tail of each test's output
	hung    map[string][]string // per package: go test's timeout report
	dead    map[string][]string // per package: the top-level tests that killed it
	broken  []string            // packages that failed with no test to blame
	raw     io.Writer           // receives every event line as read
}

func newResults() *results {
	return &results{outcome: map[string]string{}, output: map[string][]string{}, hung: map[string][]string{}, dead: map[string][]string{}}
}

const outputTail = 12

// timedOut starts go test's report of a test binary past -timeout; the
// lines after it name the tests still running.
const timedOut = "panic: test timed out"

// hungLines is how much of the timeout report is kept: its list of
// running tests, not the goroutine dump after it.
const hungLines = 40

// read records go test -json's events; an outcome already recorded (a
// test that ran before its package died) is kept. It returns the number
// of events read.
func (r *results) read(rd io.Reader) int {
	n := 0
	if r.raw != nil {
		rd = io.TeeReader(rd, r.raw)
	}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		n++
		key := e.Package + " " + e.Test
		switch e.Action {
		case "output":
			r.addOutput(e, key)
		case "pass", "fail", "skip":
			if e.Test == "" {
				if e.Action == "fail" {
					r.packageFailed(e.Package)
				}
				continue
			}
			if _, seen := r.outcome[key]; !seen {
				r.outcome[key] = e.Action
			}
		}
	}
	return n
}

func (r *results) addOutput(e event, key string) {
	line := strings.TrimRight(e.Output, "\n")
	// test2json gives the binary's last words to the test that started
	// last, whichever hung: the timeout report names the hung ones.
	if strings.HasPrefix(line, timedOut) || len(r.hung[e.Package]) > 0 {
		if len(r.hung[e.Package]) < hungLines {
			r.hung[e.Package] = append(r.hung[e.Package], line)
		}
	} else if e.Test != "" && strings.HasPrefix(line, "panic: ") {
		r.blame(e.Package, e.Test)
	}
	lines := append(r.output[key], line)
	if len(lines) > outputTail {
		lines = lines[len(lines)-outputTail:]
	}
	r.output[key] = lines
}

// packageFailed blames a dead package's death on the tests its timeout
// report names; a package with neither a panic nor a timeout did not
// build, or failed in TestMain.
func (r *results) packageFailed(pkg string) {
	for _, line := range r.hung[pkg] {
		// The running tests are listed as "\t\tTestName (duration)".
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(line, "\t\t") && strings.HasPrefix(f[1], "(") {
			r.blame(pkg, f[0])
			r.outcome[pkg+" "+f[0]] = "fail"
			r.output[pkg+" "+f[0]] = []string{"timed out: " + line}
		}
	}
	delete(r.hung, pkg)
	for key := range r.outcome {
		if strings.HasPrefix(key, pkg+" ") {
			return
		}
	}
	r.broken = append(r.broken, pkg)
}

// blame records that test, or the top-level test it belongs to, killed
// pkg's test binary.
func (r *results) blame(pkg, test string) {
	name, _, _ := strings.Cut(test, "/")
	if !slices.Contains(r.dead[pkg], name) {
		r.dead[pkg] = append(r.dead[pkg], name)
	}
}

// takeDead returns the packages to run again, each with every test that
// killed it so far, and forgets them until they die again.
func (r *results) takeDead() map[string][]string {
	dead := map[string][]string{}
	for pkg, tests := range r.dead {
		if len(tests) > 0 {
			dead[pkg] = tests
		}
	}
	for pkg := range dead {
		r.dead[pkg] = r.dead[pkg][:0]
	}
	return dead
}

func (r *results) tally() tally {
	var t tally
	for _, a := range r.outcome {
		switch a {
		case "pass":
			t.passed++
		case "fail":
			t.failed++
		case "skip":
			t.skipped++
		}
	}
	return t
}

// failure is a failed test with the tail of its output.
type failure struct {
	name   string
	output []string
}

func (r *results) failures() []failure {
	var fs []failure
	for key, a := range r.outcome {
		if a == "fail" {
			fs = append(fs, failure{name: key, output: r.output[key]})
		}
	}
	for _, pkg := range r.broken {
		fs = append(fs, failure{name: pkg + " (package did not build or run)", output: r.output[pkg+" "]})
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].name < fs[j].name })
	return fs
}

func writeReport(path string, failures []failure) error {
	var b strings.Builder
	for _, f := range failures {
		fmt.Fprintf(&b, "=== %s\n", f.name)
		for _, l := range f.output {
			fmt.Fprintf(&b, "    %s\n", l)
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
