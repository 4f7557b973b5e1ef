package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "driversuites:", err)
		os.Exit(1)
	}
}

// options are the command's flags.
type options struct {
	binary  string   // the tenantproxy binary
	out     string   // directory for the failure reports
	targets []string // direct, session, transaction
	suites  []string // pgx, pq
	timeout string   // go test -timeout per suite run
	run     string   // go test -run, to retry a few tests while classifying
}

func parseFlags() (options, error) {
	var o options
	var targets, suites string
	flag.StringVar(&o.binary, "tenantproxy", "", "path of a built tenantproxy binary (required)")
	flag.StringVar(&o.out, "out", "driver-suites.out", "directory for the list of failing tests per suite and target")
	flag.StringVar(&targets, "targets", "direct,session,transaction", "comma-separated: direct, session, transaction")
	flag.StringVar(&suites, "suites", "pgx,pq", "comma-separated: pgx, pq")
	flag.StringVar(&o.timeout, "timeout", "8m", "go test -timeout of one package's tests (a hung test costs this much)")
	flag.StringVar(&o.run, "run", "", "go test -run of every suite run (default: every test)")
	flag.Parse()
	if o.binary == "" {
		return o, errors.New("-tenantproxy is required")
	}
	o.targets, o.suites = strings.Split(targets, ","), strings.Split(suites, ",")
	for _, t := range o.targets {
		if t != "direct" && t != "session" && t != "transaction" {
			return o, fmt.Errorf("unknown target %q", t)
		}
	}
	for _, s := range o.suites {
		if _, ok := suiteByName[s]; !ok {
			return o, fmt.Errorf("unknown suite %q", s)
		}
	}
	return o, nil
}

func run() (err error) {
	o, err := parseFlags()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	env, err := startEnvironment(ctx, o.binary)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, env.stop()) }()

	var results []tally
	for _, target := range o.targets {
		for _, name := range o.suites {
			t, err := runTarget(ctx, env, o, suiteByName[name], target)
			if err != nil {
				return err
			}
			results = append(results, t)
			fmt.Fprintf(os.Stderr, "driversuites: %s %s: %d passed, %d failed, %d skipped\n", t.suite, t.target, t.passed, t.failed, t.skipped)
		}
	}
	printTable(results)
	return nil
}

// runTarget runs one suite against one target: directly, or through a
// proxy started for the pool mode and stopped afterwards.
func runTarget(ctx context.Context, env *environment, o options, s suite, target string) (tally, error) {
	conn := s.direct(env)
	if target != "direct" {
		p, err := env.startProxy(ctx, target)
		if err != nil {
			return tally{}, err
		}
		defer p.stop()
		conn = proxied(p.addr, s.database)
	}
	report := filepath.Join(o.out, s.name+"-"+target+".txt")
	return runSuite(ctx, s, target, conn, o, report)
}

func printTable(results []tally) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "suite\ttarget\tpassed\tfailed\tskipped\t")
	for _, t := range results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t\n", t.suite, t.target, t.passed, t.failed, t.skipped)
	}
	tw.Flush()
}
