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
	"sort"
	"strings"
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

// runSuite runs go test -json over a writable copy of the suite's module
// source and writes the failing tests' output to report.
func runSuite(ctx context.Context, s suite, target string, c conninfo, o options, report string) (tally, error) {
	dir, err := moduleCopy(ctx, s.module)
	if err != nil {
		return tally{}, err
	}
	defer os.RemoveAll(dir)
	args := []string{"test", "-json", "-count=1", "-timeout", o.timeout}
	if o.run != "" {
		args = append(args, "-run", o.run)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "./...")...)
	cmd.Dir = filepath.Join(dir, "src")
	cmd.Env = append(withoutPostgresEnv(os.Environ()), s.env(c)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return tally{}, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return tally{}, err
	}
	t, failures := count(stdout)
	// go test exits non-zero whenever a test fails, which is what is
	// being measured; only a run that produced no result is an error.
	if werr := cmd.Wait(); werr != nil && t.passed+t.failed+t.skipped == 0 {
		return tally{}, fmt.Errorf("%s %s: go test: %w", s.name, target, werr)
	}
	t.suite, t.target = s.name, target
	return t, writeReport(report, failures)
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

// failure is a failed test with the tail of its output.
type failure struct {
	name   string
	output []string
}

const outputTail = 12

// timedOut starts go test's report of a test binary past -timeout, whose
// next lines name the tests still running: kept whole, since the goroutine
// dump after them would push them out of the tail.
const timedOut = "panic: test timed out"

func count(r io.Reader) (tally, []failure) {
	var t tally
	var failures []failure
	outputs := map[string][]string{}
	hung := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "output":
			line := strings.TrimRight(e.Output, "\n")
			if strings.HasPrefix(line, timedOut) || (len(hung[key]) > 0 && len(hung[key]) < outputTail) {
				hung[key] = append(hung[key], line)
			}
			lines := append(outputs[key], line)
			if len(lines) > outputTail {
				lines = lines[len(lines)-outputTail:]
			}
			outputs[key] = lines
		case "pass", "fail", "skip":
			if e.Test == "" {
				// A package that fails without a failing test did not
				// build or crashed: reported, never counted as a test.
				if e.Action == "fail" {
					failures = append(failures, failure{name: e.Package + " (package)", output: append(hung[key], outputs[key]...)})
				}
				continue
			}
			switch e.Action {
			case "pass":
				t.passed++
			case "fail":
				t.failed++
				failures = append(failures, failure{name: key, output: outputs[key]})
			case "skip":
				t.skipped++
			}
			delete(outputs, key)
		}
	}
	sort.Slice(failures, func(i, j int) bool { return failures[i].name < failures[j].name })
	return t, failures
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
