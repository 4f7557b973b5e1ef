package test

import (
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/chatapi"
)

// TestChatAPILoad measures messages posted per second through HTTP → chat
// API → proxy → PostgreSQL with 50 tenants in all three tiers, and the
// latency percentiles. It is a measurement, not a check: it runs only with
// CHATAPI_LOAD=1 and asserts nothing about speed.
//
//	CHATAPI_LOAD=1 go test -run TestChatAPILoad -v ./test/
//
// CHATAPI_LOAD_DURATION (default 10s) and CHATAPI_LOAD_WORKERS (posting
// goroutines per tenant, default 4) tune it.
func TestChatAPILoad(t *testing.T) {
	if os.Getenv("CHATAPI_LOAD") == "" {
		t.Skip("set CHATAPI_LOAD=1 to measure the chat API under load")
	}
	duration := envDuration(t, "CHATAPI_LOAD_DURATION", 10*time.Second)
	workers := envInt(t, "CHATAPI_LOAD_WORKERS", 4)
	const tenants = 50
	// Session mode pins a server connection per API connection: 50 tenants
	// × 4 API connections, most of them on the shared and schema
	// databases' two pool keys.
	e := newChatEnv(t, chatEnvOptions{maxConnections: "300", poolPerKey: 100, apiPoolConns: 4, quiet: true})

	type target struct {
		sub     string
		author  int64
		channel int64
	}
	var targets []target
	tiers := map[catalog.Tier]int{}
	signUpStart := time.Now()
	for i := range tenants {
		plan := catalog.PlanFree // 20 shared
		switch {
		case i >= 40:
			plan = catalog.PlanEnterprise // 10 database
		case i >= 20:
			plan = catalog.PlanStandard // 20 schema
		}
		sub := fmt.Sprintf("load%02d", i)
		su := e.signUp(t, sub, plan)
		tiers[su.Tenant.Tier]++
		u := want[chatapi.User](t, e.do(t, as(byHeader, sub, "POST", "/users", map[string]any{"username": "poster"})), 201, "user")
		ch := want[chatapi.Channel](t, e.do(t, as(byHeader, sub, "POST", "/channels", map[string]any{"name": "load", "created_by": u.ID})), 201, "channel")
		targets = append(targets, target{sub, u.ID, ch.ID})
	}
	t.Logf("signed up %d tenants (%v) in %s", tenants, tiers, time.Since(signUpStart).Round(time.Millisecond))

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: tenants * workers}}
	defer client.CloseIdleConnections()
	var (
		mu        sync.Mutex
		latencies []time.Duration
		failures  []string
		wg        sync.WaitGroup
	)
	start := time.Now()
	stop := start.Add(duration)
	for _, tg := range targets {
		for w := range workers {
			wg.Go(func() {
				var mine []time.Duration
				path := fmt.Sprintf("/channels/%d/messages", tg.channel)
				for n := 0; time.Now().Before(stop); n++ {
					t0 := time.Now()
					r, err := e.try(client, as(byHeader, tg.sub, "POST", path, map[string]any{
						"author_id": tg.author, "body": fmt.Sprintf("load message %d from worker %d", n, w)}))
					if err != nil || r.status != http.StatusCreated {
						mu.Lock()
						failures = append(failures, fmt.Sprintf("%s: %v %v", tg.sub, r, err))
						mu.Unlock()
						continue
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				latencies = append(latencies, mine...)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(failures) > 0 {
		t.Fatalf("%d posts failed; first: %s", len(failures), failures[0])
	}
	slices.Sort(latencies)
	pct := func(p float64) time.Duration { return latencies[int(p*float64(len(latencies)-1))] }
	t.Logf("%d tenants × %d workers for %s: %d messages, %.0f messages/s; latency p50 %s, p99 %s, max %s",
		tenants, workers, elapsed.Round(time.Millisecond), len(latencies), float64(len(latencies))/elapsed.Seconds(),
		pct(0.50).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond), latencies[len(latencies)-1].Round(10*time.Microsecond))
	// Everything (client, API, proxy, PostgreSQL) shares the machine, so a
	// figure means little without how busy it was.
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		t.Logf("machine: %d CPUs, load average %s", runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "))
	}
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var n int
	if _, err := fmt.Sscan(v, &n); err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}
