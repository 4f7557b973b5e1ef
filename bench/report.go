package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Report is a run's outcome, as written to bench.json.
type Report struct {
	Started  time.Time `json:"started"`
	Took     string    `json:"took"`
	Quick    bool      `json:"quick"`
	Rounds   int       `json:"rounds"`
	Duration string    `json:"measurement_duration"`
	Machine  Machine   `json:"machine"`
	Targets  []string  `json:"targets"`
	// Notes say what was left out and why.
	Notes   []string  `json:"notes,omitempty"`
	Results []*Result `json:"results"`
}

// Machine is where the run happened.
type Machine struct {
	CPUs       int    `json:"cpus"`
	GOOS       string `json:"goos"`
	GOARCH     string `json:"goarch"`
	PostgreSQL string `json:"postgresql"`
	PgBouncer  string `json:"pgbouncer,omitempty"`
}

// Result is one metric of one case on one target over the rounds.
type Result struct {
	Scenario       string    `json:"scenario"`
	Case           string    `json:"case"`
	Target         string    `json:"target"`
	Metric         string    `json:"metric"`
	Unit           string    `json:"unit"`
	HigherIsBetter bool      `json:"higher_is_better"`
	Samples        []float64 `json:"samples"`
	Median         float64   `json:"median"`
	Min            float64   `json:"min"`
	Max            float64   `json:"max"`
	Skipped        string    `json:"skipped,omitempty"`
	Errors         []string  `json:"errors,omitempty"`
}

func (r *Result) add(v float64) {
	r.Samples = append(r.Samples, v)
	s := slices.Clone(r.Samples)
	slices.Sort(s)
	r.Min, r.Max = s[0], s[len(s)-1]
	if n := len(s); n%2 == 1 {
		r.Median = s[n/2]
	} else {
		r.Median = (s[n/2-1] + s[n/2]) / 2
	}
}

func (r *Result) ok() bool { return len(r.Samples) > 0 }

// group is one case's metric over all targets, in target order.
type group struct {
	scenario, caseName, metric, unit string
	results                          []*Result
}

// groups orders the results by scenario, case and metric, as measured.
func (rep *Report) groups() []*group {
	var out []*group
	index := map[string]*group{}
	for _, r := range rep.Results {
		key := r.Scenario + "\x00" + r.Case + "\x00" + r.Metric
		g := index[key]
		if g == nil {
			g = &group{scenario: r.Scenario, caseName: r.Case, metric: r.Metric, unit: r.Unit}
			index[key] = g
			out = append(out, g)
		}
		g.results = append(g.results, r)
	}
	slices.SortStableFunc(out, func(a, b *group) int { return strings.Compare(a.scenario, b.scenario) })
	return out
}

func (g *group) of(target string) *Result {
	for _, r := range g.results {
		if r.Target == target {
			return r
		}
	}
	return nil
}

// WriteTable prints the human table: per case and metric, each target's
// median with min–max, and its ratio to direct and to PgBouncer.
func (rep *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "tenantproxy bench · %s · %d CPUs · PostgreSQL %s", rep.Started.Format(time.RFC3339), rep.Machine.CPUs, rep.Machine.PostgreSQL)
	if rep.Machine.PgBouncer != "" {
		fmt.Fprintf(&b, " · %s", rep.Machine.PgBouncer)
	}
	fmt.Fprintf(&b, "\n%d round(s) of %s per measurement, interleaved; median (min–max); ratios are of medians\n", rep.Rounds, rep.Duration)
	const row = "    %-15s %10s  %-21s %9s %11s\n"
	scen := ""
	for _, g := range rep.groups() {
		if g.scenario != scen {
			scen = g.scenario
			fmt.Fprintf(&b, "\n(%s) %s\n", scen, scenarioTitles[scen])
			fmt.Fprintf(&b, row, "target", "median", "min–max", "× direct", "× pgbouncer")
		}
		fmt.Fprintf(&b, "  %s · %s (%s)\n", g.caseName, g.metric, g.unit)
		direct, bouncer := g.of(TargetDirect), g.of(TargetPgBouncer)
		for _, r := range g.results {
			switch {
			case r.ok():
				fmt.Fprintf(&b, row, r.Target, formatValue(r.Median), formatValue(r.Min)+"–"+formatValue(r.Max),
					ratio(r, direct), ratio(r, bouncer))
			case len(r.Errors) > 0:
				fmt.Fprintf(&b, "    %-15s failed: %s\n", r.Target, firstLine(r.Errors[0], 100))
			default:
				fmt.Fprintf(&b, "    %-15s skipped: %s\n", r.Target, r.Skipped)
			}
		}
	}
	if len(rep.Notes) > 0 {
		b.WriteString("\nnotes:\n")
		for _, n := range rep.Notes {
			fmt.Fprintf(&b, "  - %s\n", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func ratio(r, base *Result) string {
	if base == nil || !base.ok() || base.Median == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", r.Median/base.Median)
}

// formatValue prints v with a precision that suits its size.
func formatValue(v float64) string {
	switch {
	case v >= 1000:
		return withThousands(fmt.Sprintf("%.0f", v))
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func withThousands(digits string) string {
	var b strings.Builder
	for i, c := range digits {
		if i > 0 && (len(digits)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

// write stores bench.json and one chart per scenario in dir.
func (rep *Report) write(dir string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	byScenario := map[string][]*group{}
	var order []string
	for _, g := range rep.groups() {
		if byScenario[g.scenario] == nil {
			order = append(order, g.scenario)
		}
		byScenario[g.scenario] = append(byScenario[g.scenario], g)
	}
	for _, s := range order {
		svg := chart(fmt.Sprintf("(%s) %s", s, scenarioTitles[s]), rep.Targets, byScenario[s])
		if err := os.WriteFile(filepath.Join(dir, "scenario-"+s+".svg"), []byte(svg), 0o644); err != nil {
			return err
		}
	}
	return nil
}
