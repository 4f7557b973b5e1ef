package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/test"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

var (
	dashboardPath = filepath.Join("grafana", "tenantproxy.json")
	rulesPath     = filepath.Join("prometheus", "rules.yaml")
)

// targetLabels are attached by Prometheus to every series it scrapes, and
// scrapeMetrics are the series it makes up itself; neither comes from the
// proxy.
var (
	targetLabels  = []string{"job", "instance"}
	scrapeMetrics = []string{"up"}
)

// quotaMetrics are queried by the storage quota alerts but have series
// only for tenants at 80% of their quota or more (proxy/quota.go), which
// the traffic here does not make; their labels are the tenant's.
var quotaMetrics = []string{
	"tenantproxy_tenant_storage_bytes", "tenantproxy_tenant_storage_limit_bytes", "tenantproxy_read_only_tenants",
}

// family is what a query may name of one exported metric: its labels.
type family struct {
	labels map[string]bool
}

// query is one PromQL expression and where it was found.
type query struct {
	where, expr string
	// labelValues is the label a Grafana label_values() variable lists;
	// expr is then its selector.
	labelValues string
}

// TestDashboardAndRulesQueryExportedMetrics runs `serve` with the isolation
// canary, sends it the traffic that gives every labelled metric a series,
// and checks that each metric the dashboard and the alert rules query is
// on its /metrics, with the labels they select and group by.
func TestDashboardAndRulesQueryExportedMetrics(t *testing.T) {
	queries := append(dashboardQueries(t), ruleQueries(t)...)
	wanted := map[string]bool{}
	for _, q := range queries {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Fatalf("%s: %v", q.where, err)
		}
		for _, n := range names {
			if !slices.Contains(scrapeMetrics, n) && !slices.Contains(quotaMetrics, n) {
				wanted[n] = true
			}
		}
	}
	exported := scrapeServe(t, wanted)
	for _, name := range quotaMetrics {
		exported[name] = family{labels: map[string]bool{"tenant": true}}
	}
	for _, q := range queries {
		if err := checkQuery(q, exported); err != nil {
			t.Errorf("%s: %v", q.where, err)
		}
	}
}

// TestCheckQueryRefusesWhatIsNotExported pins what the check above refuses,
// so that it cannot pass by checking nothing.
func TestCheckQueryRefusesWhatIsNotExported(t *testing.T) {
	exported := map[string]family{
		"tenantproxy_queries_total":      {labels: map[string]bool{"tenant": true}},
		"tenantproxy_server_connections": {labels: map[string]bool{"database": true, "user": true, "state": true}},
	}
	for _, tt := range []struct {
		expr string
		ok   bool
	}{
		{`sum by (tenant) (rate(tenantproxy_queries_total{job="x", tenant=~"$tenant"}[$__rate_interval]))`, true},
		{`sum by (database, state) (tenantproxy_server_connections{instance=~"$instance"})`, true},
		{`rate(tenantproxy_query_total[5m])`, false},
		{`tenantproxy_server_connections{tenant="acme"}`, false},
		{`sum by (tenant) (tenantproxy_server_connections)`, false},
		{`sum by (tenant) (rate(tenantproxy_queries_total[5m]))`, true},
		{`up == 0`, true},
		{`rate(tenantproxy_queries_total[5m`, false},
	} {
		err := checkQuery(query{where: "table", expr: tt.expr}, exported)
		if (err == nil) != tt.ok {
			t.Errorf("checkQuery(%s) = %v; want ok=%v", tt.expr, err, tt.ok)
		}
	}
	if err := checkQuery(query{where: "table", expr: `tenantproxy_queries_total{job="$job"}`, labelValues: "state"}, exported); err == nil {
		t.Error("checkQuery accepted label_values over a label the metric does not have")
	}
}

// dashboardQueries are every "expr" of the dashboard's panels and the
// selectors of its label_values() template variables.
func dashboardQueries(t *testing.T) []query {
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels     []map[string]any `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var qs []query
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if title, ok := v["title"].(string); ok {
				where = fmt.Sprintf("%s: panel %q", dashboardPath, title)
			}
			for k, child := range v {
				if expr, ok := child.(string); ok && k == "expr" {
					qs = append(qs, query{where: where, expr: expr})
					continue
				}
				walk(where, child)
			}
		case []any:
			for _, child := range v {
				walk(where, child)
			}
		}
	}
	for _, p := range dash.Panels {
		walk(dashboardPath, p)
	}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		text := fmt.Sprint(v.Query)
		if m, ok := v.Query.(map[string]any); ok {
			text = fmt.Sprint(m["query"])
		}
		where := dashboardPath + ": variable " + v.Name
		m := labelValues.FindStringSubmatch(text)
		if m == nil {
			t.Errorf("%s: %q is not label_values(selector, label), the only form the test reads", where, text)
			continue
		}
		qs = append(qs, query{where: where, expr: m[1], labelValues: m[2]})
	}
	if len(qs) < 10 {
		t.Fatalf("%s: found %d queries; the walker is broken", dashboardPath, len(qs))
	}
	return qs
}

// ruleQueries parses the rules file as Prometheus does (unknown fields,
// bad PromQL and bad templates are errors) and returns every rule's expr.
func ruleQueries(t *testing.T) []query {
	groups, errs := rulefmt.ParseFile(rulesPath, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatalf("%s: %v", rulesPath, errors.Join(errs...))
	}
	var qs []query
	var isolation bool
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			qs = append(qs, query{where: rulesPath + ": " + name, expr: r.Expr})
			isolation = isolation || strings.Contains(r.Expr, "tenantproxy_isolation_violations_total")
		}
	}
	if !isolation {
		t.Errorf("%s: no rule alerts on tenantproxy_isolation_violations_total, which the README promises", rulesPath)
	}
	return qs
}

// TestAlertRulesUnitTests runs the promtool unit tests of the alert rules
// (prometheus/rules_test.yaml), when promtool is installed (.ci/run
// installs it where it can).
func TestAlertRulesUnitTests(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed")
	}
	cmd := exec.Command(promtool, "test", "rules", "rules_test.yaml")
	cmd.Dir = filepath.Dir(rulesPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// grafanaVariables are Grafana's own and the dashboard's variables, which
// must become PromQL before a parser sees them.
var (
	grafanaIntervals = regexp.MustCompile(`\$__(rate_interval|interval|range)\b`)
	grafanaVariables = regexp.MustCompile(`\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?`)
)

func parseQuery(expr string) (parser.Expr, error) {
	expr = grafanaIntervals.ReplaceAllString(expr, "5m")
	expr = grafanaVariables.ReplaceAllString(expr, "placeholder")
	return parser.NewParser(parser.Options{}).ParseExpr(expr)
}

// metricNames are the metrics expr selects, in order of appearance.
func metricNames(expr string) ([]string, error) {
	e, err := parseQuery(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, vs := range selectors(e) {
		names = append(names, selectorName(vs))
	}
	return names, nil
}

func selectors(n parser.Node) []*parser.VectorSelector {
	var out []*parser.VectorSelector
	parser.Inspect(n, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			out = append(out, vs)
		}
		return nil
	})
	return out
}

func selectorName(vs *parser.VectorSelector) string {
	if vs.Name != "" {
		return vs.Name
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == model.MetricNameLabel {
			return m.Value
		}
	}
	return ""
}

// checkQuery wants every metric q selects exported, every label it
// matches on one that metric has, and every label an aggregation groups by
// one that some metric below it has.
func checkQuery(q query, exported map[string]family) error {
	e, err := parseQuery(q.expr)
	if err != nil {
		return fmt.Errorf("%s: %w", q.expr, err)
	}
	var errs []error
	hasLabel := func(name, label string) bool {
		if slices.Contains(targetLabels, label) {
			return true
		}
		f, ok := exported[name]
		return ok && f.labels[label]
	}
	for _, vs := range selectors(e) {
		name := selectorName(vs)
		if slices.Contains(scrapeMetrics, name) {
			continue
		}
		if _, ok := exported[name]; !ok {
			errs = append(errs, fmt.Errorf("metric %q is not exported by serve", name))
			continue
		}
		for _, m := range vs.LabelMatchers {
			if m.Name != model.MetricNameLabel && !hasLabel(name, m.Name) {
				errs = append(errs, fmt.Errorf("%s has no label %q", name, m.Name))
			}
		}
		if q.labelValues != "" && !hasLabel(name, q.labelValues) {
			errs = append(errs, fmt.Errorf("label_values: %s has no label %q", name, q.labelValues))
		}
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		agg, ok := n.(*parser.AggregateExpr)
		if !ok || agg.Without {
			return nil
		}
		for _, label := range agg.Grouping {
			if !slices.ContainsFunc(selectors(agg.Expr), func(vs *parser.VectorSelector) bool {
				return hasLabel(selectorName(vs), label)
			}) {
				errs = append(errs, fmt.Errorf("%s groups by %q, which none of its metrics has", agg.Op, label))
			}
		}
		return nil
	})
	return errors.Join(errs...)
}

// scrapeServe runs `serve` on a migrated catalog with one tenant and the
// isolation canary, and sends it traffic until /metrics shows every
// metric in wanted (or a minute passes): a session that queries, a wrong
// password, and a connection the per-address start-up cap refuses. It
// returns the families /metrics shows, histograms and summaries under the
// names of their series (_bucket, _sum, _count).
func scrapeServe(t *testing.T, wanted map[string]bool) map[string]family {
	bin := binary(t)
	env := append(os.Environ(), "TENANTPROXY_CATALOG_DSN="+pgtest.NewDatabase(t, pgtest.Shared(t)))
	cli := func(args ...string) {
		cmd := exec.Command(bin, append(args, "--log-level", "warn")...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("tenantproxy %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	cli("migrate", "up")
	cli("tenant", "create", "acme", "--plan", "free", "--admin-user", "alice", "--admin-password", "correct-horse")

	listen, adminAddr := test.FreeAddr(t), test.FreeAddr(t)
	logPath := filepath.Join(t.TempDir(), "serve.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	serve := exec.Command(bin, "serve", "--listen", listen, "--admin-listen", adminAddr,
		"--isolation-check-interval", "1s", "--max-startup-conns-per-addr", "1", "--drain-timeout", "1s", "--log-level", "warn")
	serve.Env, serve.Stdout, serve.Stderr = env, logFile, logFile
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		serve.Process.Signal(syscall.SIGTERM)
		serve.Wait()
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("serve's log:\n%s", out)
		}
	})

	var fams map[string]family
	deadline := time.Now().Add(time.Minute)
	for {
		sendTraffic(t, listen)
		fams, err = scrape(adminAddr)
		missing := []string{}
		for name := range wanted {
			if _, ok := fams[name]; !ok {
				missing = append(missing, name)
			}
		}
		if err == nil && len(missing) == 0 {
			return fams
		}
		if time.Now().After(deadline) {
			sort.Strings(missing)
			t.Logf("after a minute of traffic /metrics (err %v) still lacks %s", err, strings.Join(missing, ", "))
			return fams
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sendTraffic makes one round of the traffic scrapeServe needs. Errors are
// not failures: the canary's logins race ours for the start-up cap of one,
// and the next round tries again.
func sendTraffic(t *testing.T, listen string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dsn := func(password string) string {
		return "postgres://alice.acme:" + password + "@" + listen + "/chat?sslmode=disable"
	}
	if conn, err := pgx.Connect(ctx, dsn("correct-horse")); err == nil {
		tx, err := conn.Begin(ctx)
		if err == nil {
			tx.Exec(ctx, "select 1")
			tx.Commit(ctx)
		}
		conn.Close(ctx)
	}
	if _, err := pgx.Connect(ctx, dsn("wrong-horse")); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code != "28P01" && pgErr.Code != "53300" {
			t.Logf("wrong password: %v", err)
		}
	}
	// Two connections that never start up: the second is over the
	// per-address cap of one.
	held, err := net.DialTimeout("tcp", listen, time.Second)
	if err != nil {
		return
	}
	defer held.Close()
	over, err := net.DialTimeout("tcp", listen, time.Second)
	if err != nil {
		return
	}
	defer over.Close()
	over.SetReadDeadline(time.Now().Add(time.Second))
	over.Read(make([]byte, 512))
}

func scrape(adminAddr string) (map[string]family, error) {
	mfs, err := test.ScrapeMetrics(adminAddr)
	if err != nil {
		return nil, err
	}
	out := map[string]family{}
	for name, mf := range mfs {
		labels := map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = true
			}
		}
		switch mf.GetType().String() {
		case "HISTOGRAM", "GAUGE_HISTOGRAM":
			bucket := map[string]bool{"le": true}
			for l := range labels {
				bucket[l] = true
			}
			out[name+"_bucket"] = family{labels: bucket}
			out[name+"_sum"] = family{labels: labels}
			out[name+"_count"] = family{labels: labels}
		case "SUMMARY":
			quantile := map[string]bool{"quantile": true}
			for l := range labels {
				quantile[l] = true
			}
			out[name] = family{labels: quantile}
			out[name+"_sum"] = family{labels: labels}
			out[name+"_count"] = family{labels: labels}
		default:
			out[name] = family{labels: labels}
		}
	}
	return out, nil
}
