package bench

import (
	"strings"
	"testing"
)

func TestResultKeepsMedianMinMaxOfSamples(t *testing.T) {
	tests := []struct {
		samples        []float64
		median, lo, hi float64
	}{
		{[]float64{5}, 5, 5, 5},
		{[]float64{3, 1}, 2, 1, 3},
		{[]float64{9, 1, 4}, 4, 1, 9},
		{[]float64{4, 8, 1, 2}, 3, 1, 8},
	}
	for _, tc := range tests {
		var r Result
		for _, s := range tc.samples {
			r.add(s)
		}
		if r.Median != tc.median || r.Min != tc.lo || r.Max != tc.hi {
			t.Errorf("samples %v: median %v min %v max %v; want %v %v %v", tc.samples, r.Median, r.Min, r.Max, tc.median, tc.lo, tc.hi)
		}
		if len(r.Samples) != len(tc.samples) || r.Samples[0] != tc.samples[0] {
			t.Errorf("samples %v kept as %v; want them in measurement order", tc.samples, r.Samples)
		}
	}
}

func TestFormatValue(t *testing.T) {
	for v, want := range map[float64]string{
		0.123: "0.12", 7: "7.00", 12.34: "12.3", 512.7: "513", 1234: "1,234", 41203.4: "41,203", 1234567: "1,234,567",
	} {
		if got := formatValue(v); got != want {
			t.Errorf("formatValue(%v) = %q, want %q", v, got, want)
		}
	}
}

// TestTableShowsRatiosAndReasons checks the table against a report built
// by hand: ratios of medians to direct and to PgBouncer, and skipped or
// failed targets with their reason instead of numbers.
func TestTableShowsRatiosAndReasons(t *testing.T) {
	res := func(target string, samples ...float64) *Result {
		r := &Result{Scenario: "a", Case: "select-only -M simple c=8", Target: target, Metric: "throughput", Unit: "tps", HigherIsBetter: true}
		for _, s := range samples {
			r.add(s)
		}
		return r
	}
	failed := res(TargetTransaction)
	failed.Errors = []string{"pgbench: exit status 2\nmore detail"}
	skipped := res("other")
	skipped.Skipped = "not installed"
	rep := &Report{Rounds: 3, Duration: "5s", Targets: []string{TargetDirect, TargetSession, TargetPgBouncer}, Results: []*Result{
		res(TargetDirect, 100, 110, 90), res(TargetSession, 80, 70, 90), res(TargetPgBouncer, 50, 40, 60), failed, skipped,
	}}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"(a) per-query overhead",
		"select-only -M simple c=8 · throughput (tps)",
		"tp-session            80.0  70.0–90.0                  0.80        1.60",
		"pgbouncer             50.0  40.0–60.0                  0.50        1.00",
		"tp-transaction  failed: pgbench: exit status 2\n",
		"other           skipped: not installed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestChartEscapesAndDrawsEveryTarget(t *testing.T) {
	r := &Result{Case: `a<b & "c"`, Target: TargetDirect, Metric: "throughput", Unit: "tps", HigherIsBetter: true}
	r.add(10)
	svg := chart("(a) <title>", []string{TargetDirect}, []*group{{caseName: r.Case, metric: r.Metric, unit: r.Unit, results: []*Result{r}}})
	if strings.Contains(svg, "a<b") || !strings.Contains(svg, "a&lt;b &amp;") || !strings.Contains(svg, "&lt;title&gt;") {
		t.Errorf("chart does not escape text:\n%s", svg)
	}
	if strings.Count(svg, "<rect") != 2 { // background and one bar
		t.Errorf("chart has %d rects, want the background and one bar:\n%s", strings.Count(svg, "<rect"), svg)
	}
}
