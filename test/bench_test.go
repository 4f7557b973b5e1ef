package test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/bench"
	"github.com/tenantproxy/tenantproxy/internal/pgcluster"
)

// TestBenchQuickRunsEveryScenario runs `tenantproxy bench --quick` against
// a freshly built binary and checks that every scenario produced numbers on
// the direct and session-mode targets, that the JSON and the charts are
// written, and that the table compares targets. It asserts no timings:
// benchmarks are benchmarks. PgBouncer is measured when installed and
// otherwise reported as skipped.
func TestBenchQuickRunsEveryScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a one-minute benchmark")
	}
	if _, err := pgcluster.BinDir(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	bin := filepath.Join(t.TempDir(), "tenantproxy")
	build := exec.Command("go", "build", "-o", bin, "github.com/tenantproxy/tenantproxy/cmd/tenantproxy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	report, err := bench.Run(ctx, bench.Options{ProxyBinary: bin, OutDir: out, Quick: true, Duration: time.Second, Progress: &progress})
	if err != nil {
		t.Fatalf("bench --quick: %v\nprogress:\n%s", err, progress.String())
	}

	for _, s := range []struct{ scenario, metric string }{
		{"a", "throughput"}, {"a", "proxy CPU per transaction"}, {"b", "throughput, 1 tenant"},
		{"b", "40 tenants ÷ 1 tenant"}, {"c", "throughput"}, {"c", "RSS"}, {"d", "connections"},
		{"e", "quiet p99 beside noisy"}, {"g", "p50 over direct"}, {"h", "throughput"},
	} {
		for _, target := range []string{bench.TargetDirect, bench.TargetSession} {
			if (s.metric == "RSS" || s.metric == "proxy CPU per transaction") && target == bench.TargetDirect {
				continue // PostgreSQL's resources are not the proxy's
			}
			if !hasSamples(report, s.scenario, target, s.metric) {
				t.Errorf("scenario (%s) has no %s for %s; progress:\n%s", s.scenario, s.metric, target, progress.String())
			}
		}
	}
	// Transaction mode is measured whenever the binary has it, and in (h)
	// also held to one core, there only.
	if slices.Contains(report.Targets, bench.TargetTransaction) {
		for _, s := range []struct{ scenario, target, metric string }{
			{"a", bench.TargetTransaction, "throughput"}, {"b", bench.TargetTransaction, "throughput, 1 tenant"},
			{"c", bench.TargetTransaction, "throughput"}, {"d", bench.TargetTransaction, "connections"},
			{"g", bench.TargetTransaction, "p50 over direct"}, {"h", bench.TargetTransaction, "throughput"},
			{"h", bench.TargetTransactionOneProc, "throughput"}, {"h", bench.TargetTransactionOneProc, "proxy CPU per transaction"},
		} {
			if !hasSamples(report, s.scenario, s.target, s.metric) {
				t.Errorf("scenario (%s) has no %s for %s; progress:\n%s", s.scenario, s.metric, s.target, progress.String())
			}
		}
		for _, r := range report.Results {
			if r.Target == bench.TargetTransactionOneProc && r.Scenario != "h" {
				t.Errorf("%s measured in scenario (%s); it belongs to (h) only", r.Target, r.Scenario)
			}
		}
	}
	if !hasSamples(report, "f", "catalog", "tenants created") {
		t.Errorf("scenario (f) measured no provisioning rate")
	}
	for _, r := range report.Results {
		if len(r.Errors) > 0 && (r.Target == bench.TargetDirect || r.Target == bench.TargetSession) {
			t.Errorf("(%s) %s on %s failed: %s", r.Scenario, r.Case, r.Target, r.Errors[0])
		}
	}

	raw, err := os.ReadFile(filepath.Join(out, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	var decoded bench.Report
	if err := json.Unmarshal(raw, &decoded); err != nil || len(decoded.Results) != len(report.Results) {
		t.Fatalf("bench.json: %v, %d results; want the report's %d", err, len(decoded.Results), len(report.Results))
	}
	for _, s := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		svg, err := os.ReadFile(filepath.Join(out, "scenario-"+s+".svg"))
		if err != nil || !bytes.HasPrefix(svg, []byte("<svg")) || !bytes.Contains(svg, []byte("<rect")) {
			t.Errorf("chart of scenario %s: %v, %d bytes without bars", s, err, len(svg))
		}
	}
	var table strings.Builder
	if err := report.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"(a) per-query overhead", "× direct", bench.TargetSession, "select-only -M prepared",
		"TPC-B-like -M simple c=8", "(g) added latency", "(h) scaling with cores"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

func hasSamples(r *bench.Report, scenario, target, metric string) bool {
	for _, res := range r.Results {
		if res.Scenario == scenario && res.Target == target && res.Metric == metric && len(res.Samples) > 0 {
			return true
		}
	}
	return false
}
