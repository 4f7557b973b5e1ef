package main

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/test"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// TestServeExportsOperatorMetrics runs serve in each pool mode, logs in
// twice and runs a known number of queries and transactions, and reads
// /metrics: the build's identity, the tenant's bytes each way, one
// latency observation per query and per transaction, one pool wait per
// acquire, and the catalog's caches missing the first login and hitting
// the second.
func TestServeExportsOperatorMetrics(t *testing.T) {
	dsn := pgtest.NewDatabase(t, pgtest.Shared(t))
	t.Setenv("TENANTPROXY_CATALOG_DSN", dsn)
	mustCLI(t, "migrate", "up")
	mustCLI(t, "tenant", "create", "acme", "--plan", "free", "--admin-user", "alice", "--admin-password", "correct-horse")
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			listen, adminAddr := test.FreeAddr(t), test.FreeAddr(t)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- run(ctx, []string{"serve", "--listen", listen, "--admin-listen", adminAddr, "--drain-timeout", "1s",
					// No storage rounds: each updates the tenant's row, which
					// empties the caches whose hits this test counts.
					"--pool-mode", mode, "--storage-interval", "0", "--log-level", "warn"}, io.Discard, io.Discard)
			}()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("serve stopped with %v", err)
				}
			}()
			before := waitForMetrics(t, adminAddr, done)
			checkBuildInfo(t, before)

			url := "postgres://alice.acme:correct-horse@" + listen + "/chat?sslmode=disable"
			// Three statements on their own and one transaction of three:
			// six queries, four transactions.
			runStatements(t, url, "SELECT 1", "SELECT 2", "SELECT 3")
			first := scrapeMetrics(t, adminAddr)
			runStatements(t, url, "BEGIN", "SELECT 4", "COMMIT")
			after := scrapeMetrics(t, adminAddr)

			for name, want := range map[string]float64{
				"tenantproxy_query_duration_seconds":       6,
				"tenantproxy_transaction_duration_seconds": 4,
			} {
				if got := after.count(name, nil) - before.count(name, nil); got != want {
					t.Errorf("%s counted %v observations; want %v", name, got, want)
				}
			}
			// Session mode acquires once per login; transaction mode once
			// per login (its start-up) and once per transaction.
			waits := 2.0
			if mode == "transaction" {
				waits += 4
			}
			if got := after.count("tenantproxy_pool_wait_seconds", nil) - before.count("tenantproxy_pool_wait_seconds", nil); got != waits {
				t.Errorf("tenantproxy_pool_wait_seconds counted %v acquires; want %v", got, waits)
			}
			for _, name := range []string{"tenantproxy_client_received_bytes_total", "tenantproxy_client_sent_bytes_total"} {
				if got := after.value(name, map[string]string{"tenant": "acme"}); got <= 0 {
					t.Errorf("%s{tenant=\"acme\"} = %v; want bytes counted", name, got)
				}
			}
			checkCacheLookups(t, before, first, after)
		})
	}
}

// checkBuildInfo wants tenantproxy_build_info at 1 with the running Go
// version and the version and commit `version` prints.
func checkBuildInfo(t *testing.T, m scraped) {
	t.Helper()
	b, _ := readBuild()
	labels := map[string]string{"version": b.version, "commit": b.commit, "goversion": runtime.Version()}
	if got := m.value("tenantproxy_build_info", labels); got != 1 {
		t.Errorf("tenantproxy_build_info%v = %v; want 1", labels, got)
	}
}

// checkCacheLookups wants the first login (a restarted proxy's first) to
// read the tenant and the user from the control database, and the second
// to find both cached.
func checkCacheLookups(t *testing.T, before, first, second scraped) {
	t.Helper()
	const name = "tenantproxy_catalog_cache_lookups_total"
	for _, cache := range []string{"tenants", "users"} {
		delta := func(from, to scraped, result string) float64 {
			l := map[string]string{"cache": cache, "result": result}
			return to.value(name, l) - from.value(name, l)
		}
		if got := delta(before, first, "miss"); got < 1 {
			t.Errorf("%s cache: the first login missed %v times; want at least once", cache, got)
		}
		if miss, hit := delta(first, second, "miss"), delta(first, second, "hit"); miss != 0 || hit < 1 {
			t.Errorf("%s cache: the second login missed %v and hit %v times; want only hits", cache, miss, hit)
		}
	}
}

// runStatements logs in and runs each statement with the simple protocol:
// one Query and one ReadyForQuery each.
func runStatements(t *testing.T, url string, sqls ...string) {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range sqls {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// scraped is one read of /metrics.
type scraped map[string]*dto.MetricFamily

// find returns the series of name whose labels include labels.
func (s scraped) find(name string, labels map[string]string) *dto.Metric {
	fam := s[name]
	if fam == nil {
		return nil
	}
series:
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue series
			}
		}
		return m
	}
	return nil
}

// value is a counter's or gauge's value; 0 when the series is absent.
func (s scraped) value(name string, labels map[string]string) float64 {
	m := s.find(name, labels)
	if m == nil {
		return 0
	}
	if g := m.GetGauge(); g != nil {
		return g.GetValue()
	}
	return m.GetCounter().GetValue()
}

// count is a histogram's number of observations.
func (s scraped) count(name string, labels map[string]string) float64 {
	m := s.find(name, labels)
	if m == nil {
		return 0
	}
	return float64(m.GetHistogram().GetSampleCount())
}

func scrapeMetrics(t *testing.T, adminAddr string) scraped {
	t.Helper()
	s, err := tryScrape(adminAddr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func tryScrape(adminAddr string) (scraped, error) {
	return test.ScrapeMetrics(adminAddr)
}

// waitForMetrics waits for serve to be ready and returns its first
// scrape.
func waitForMetrics(t *testing.T, adminAddr string, done <-chan error) scraped {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if httpStatus("http://"+adminAddr+"/readyz") == http.StatusOK {
			return scrapeMetrics(t, adminAddr)
		}
		if time.Now().After(deadline) {
			t.Fatal("serve not ready within 30 s")
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
