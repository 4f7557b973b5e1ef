package bench

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"time"
)

// pgbenchRun is one pgbench invocation's outcome.
type pgbenchRun struct {
	tps       float64
	latencyMS float64
	// transactions is the count pgbench completed.
	transactions float64
}

var (
	tpsLine     = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	latencyLine = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	txLine      = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
)

// runPgbench runs pgbench for d against connString with args (mode,
// clients, script) and parses its throughput and mean latency. The tps of
// pgbench 14+ excludes the initial connection time, except with -C, where
// connecting is part of every transaction.
func runPgbench(ctx context.Context, bin, connString string, d time.Duration, args ...string) (pgbenchRun, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	full := append([]string{"-n", "-T", strconv.Itoa(secs)}, args...)
	full = append(full, connString)
	// -T is pgbench's own bound; the context only guards against a target
	// that stops answering.
	run, cancel := context.WithTimeout(ctx, d+2*stuckAfter)
	defer cancel()
	out, err := exec.CommandContext(run, bin, full...).CombinedOutput()
	if ctx.Err() != nil {
		// The run was interrupted (Ctrl-C), not stuck.
		return pgbenchRun{}, ctx.Err()
	}
	if run.Err() != nil {
		return pgbenchRun{}, fmt.Errorf("pgbench still running %s after its -T %ds: the target stopped answering", 2*stuckAfter, secs)
	}
	if err != nil {
		return pgbenchRun{}, fmt.Errorf("pgbench: %w: %s", err, tail(out, 600))
	}
	m := tpsLine.FindSubmatch(out)
	if m == nil {
		// pgbench's clock runs while its threads connect their clients one
		// after another; on a loaded machine that can use up all of -T.
		return pgbenchRun{}, fmt.Errorf("pgbench completed no transaction in %ds (connecting took the whole measurement?): %s", secs, tail(out, 300))
	}
	var r pgbenchRun
	r.tps, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := latencyLine.FindSubmatch(out); m != nil {
		r.latencyMS, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if m := txLine.FindSubmatch(out); m != nil {
		r.transactions, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	return r, nil
}

// pgbenchThreads is pgbench's -j for c clients: one thread per core, never
// more threads than clients.
func pgbenchThreads(c int) string { return strconv.Itoa(min(c, runtime.NumCPU())) }
