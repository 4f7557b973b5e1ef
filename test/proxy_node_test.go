package test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestNodePostgresThroughProxy runs test/node/client.js (node-postgres) as
// each tier's tenant: its own rows only, a named prepared statement reused,
// an error inside a transaction, and a refused SET ROLE that leaves the
// connection usable. The node modules come from `npm ci` in test/node,
// which test/run does.
func TestNodePostgresThroughProxy(t *testing.T) {
	node := nodeWith(t, "pg")
	e := newProxyEnv(t)
	_, addr := e.startProxy(t, proxy.Config{})
	for _, tt := range tierTenants {
		t.Run(string(tt.tier)+"/"+tt.sub, func(t *testing.T) {
			var got struct {
				Bodies            []string `json:"bodies"`
				DivisionError     string   `json:"divisionError"`
				SetRoleError      string   `json:"setRoleError"`
				CountAfterRefusal int      `json:"countAfterRefusal"`
			}
			runNode(t, node, "client.js", addr, tt.sub, tt.sub, false, &got)
			if len(got.Bodies) != 3 {
				t.Fatalf("node sees %d messages %q; want its 3", len(got.Bodies), got.Bodies)
			}
			for _, b := range got.Bodies {
				if !strings.HasPrefix(b, tt.sub+" ") {
					t.Fatalf("tenant %s reads another tenant's message %q", tt.sub, b)
				}
			}
			if got.DivisionError != "22012" {
				t.Errorf("1/0 inside a transaction gave %q; want 22012", got.DivisionError)
			}
			if got.SetRoleError != "42501" {
				t.Errorf("SET ROLE gave %q; want the policy's 42501", got.SetRoleError)
			}
			if got.CountAfterRefusal != 3 {
				t.Errorf("after the refusal the connection counted %d messages; want 3", got.CountAfterRefusal)
			}
		})
	}
}

// TestNodeLibrariesThroughProxy runs test/node/knex.js and
// test/node/sequelize.js as each tier's tenant in both pool modes: query
// builder inserts and selects, a committed and a rolled-back transaction,
// and where the tenant may change its schema (the database tier, and the
// schema tier with allow_ddl) knex's migrate.latest and Sequelize's sync()
// making their own tables. The shared tier, where schema changes go only
// through the app's migrations, uses the chat schema's users table.
func TestNodeLibrariesThroughProxy(t *testing.T) {
	node := nodeWith(t, "knex", "sequelize")
	e := newProxyEnv(t)
	e.setSettings(t, "initech", `{"policy": {"allow_ddl": true}}`)
	for _, mode := range poolModes {
		_, addr := e.startProxy(t, proxy.Config{PoolMode: mode})
		for _, tt := range tierTenants {
			ddl := tt.tier != catalog.TierShared
			for _, lib := range []string{"knex", "sequelize"} {
				t.Run(mode+"/"+string(tt.tier)+"/"+tt.sub+"/"+lib, func(t *testing.T) {
					var got struct {
						Migrated struct {
							Batch int      `json:"batch"`
							Log   []string `json:"log"`
						} `json:"migrated"`
						Synced bool     `json:"synced"`
						Rows   []string `json:"rows"`
					}
					mark := tt.sub + "_" + mode
					runNode(t, node, lib+".js", addr, tt.sub, mark, ddl, &got)
					if ddl && lib == "knex" && (got.Migrated.Batch != 1 || strings.Join(got.Migrated.Log, ",") != "001_notes.js") {
						t.Errorf("migrate.latest ran batch %d %q; want batch 1 with 001_notes.js", got.Migrated.Batch, got.Migrated.Log)
					}
					if ddl && lib == "sequelize" && !got.Synced {
						t.Error("sync() did not finish")
					}
					checkLibraryRows(t, got.Rows, lib+"-"+tt.sub+"_", lib+"-"+mark)
				})
			}
		}
	}
}

// checkLibraryRows: rows are the tenant's own (tenantPrefix; an earlier
// mode's rows may be there too), with this run's two committed rows and
// not the rolled-back one.
func checkLibraryRows(t *testing.T, rows []string, tenantPrefix, run string) {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range rows {
		if !strings.HasPrefix(r, tenantPrefix) {
			t.Errorf("tenant reads row %q, not its own (want prefix %s)", r, tenantPrefix)
		}
		seen[r] = true
	}
	if !seen[run+"-1"] || !seen[run+"-2"] || seen[run+"-rolled-back"] {
		t.Errorf("rows %q; want %s-1 and %s-2 committed and %s-rolled-back not", rows, run, run, run)
	}
}

// nodeWith returns node's path, skipping (failing in CI) when node or one
// of the test/node modules is missing.
func nodeWith(t *testing.T, modules ...string) string {
	t.Helper()
	node, err := exec.LookPath("node")
	for _, m := range modules {
		dir := filepath.Join("node", "node_modules", m)
		if _, statErr := os.Stat(dir); err != nil || statErr != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("node or %s missing in CI (node: %v, modules: %v)", dir, err, statErr)
			}
			t.Skipf("%s not installed (run npm ci in test/node): node %v, modules %v", m, err, statErr)
		}
	}
	return node
}

// runNode runs test/node/script as tenant sub through the proxy at addr
// and decodes the JSON it prints into got.
func runNode(t *testing.T, node, script, addr, sub, mark string, ddl bool, got any) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	ddlFlag := "0"
	if ddl {
		ddlFlag = "1"
	}
	cmd := exec.CommandContext(ctxT(t), node, filepath.Join("node", script))
	cmd.Env = append(os.Environ(), "TP_HOST="+host, "TP_PORT="+port, "TP_USER=alice."+sub,
		"TP_PASSWORD="+tenantPassword, "TP_MARK="+mark, "TP_DDL="+ddlFlag)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", script, err, stderr.String())
	}
	if err := json.Unmarshal(out, got); err != nil {
		t.Fatalf("node %s printed %q: %v", script, out, err)
	}
}

// TestNodeJobQueueThroughProxy runs test/node/pgboss.js as two
// database-tier tenants in both pool modes: pg-boss installs its own schema
// (which needs PL/pgSQL: allow_procedural), sends three jobs, and two
// fetches at once take them all without taking one twice (SKIP LOCKED),
// each run leaving one job queued. A tenant sees its own jobs only, never
// the other's left ones. pg-boss does not run in the schema and shared
// tiers (README, "Node's query builders and ORMs").
func TestNodeJobQueueThroughProxy(t *testing.T) {
	node := nodeWith(t, "pg-boss")
	e := newProxyEnv(t)
	ctx := ctxT(t)
	subs := []string{"umbrella", "wayne"}
	if _, err := e.cat.Create(ctx, catalog.CreateRequest{Subdomain: subs[1], Plan: catalog.PlanEnterprise, Tier: catalog.TierDatabase, AdminUser: "alice", AdminPassword: tenantPassword}); err != nil {
		t.Fatal(err)
	}
	for _, sub := range subs {
		e.setSettings(t, sub, `{"policy": {"allow_procedural": true}}`)
	}
	for _, mode := range poolModes {
		_, addr := e.startProxy(t, proxy.Config{PoolMode: mode})
		for _, sub := range subs {
			t.Run(mode+"/"+sub, func(t *testing.T) {
				var got struct {
					IDs  []string `json:"ids"`
					Seen []string `json:"seen"`
					Rest int      `json:"rest"`
				}
				mark := sub + "_" + mode
				runNode(t, node, "pgboss.js", addr, sub, mark, true, &got)
				if got.Rest != 0 || len(got.IDs) != len(got.Seen) || len(slices.Compact(slices.Sorted(slices.Values(got.IDs)))) != len(got.IDs) {
					t.Errorf("fetched ids %q (one twice?) and then %d more; want each job once and none left", got.IDs, got.Rest)
				}
				seen := map[string]bool{}
				for _, m := range got.Seen {
					if !strings.HasPrefix(m, sub+"_") {
						t.Errorf("tenant %s worked job %q, not its own", sub, m)
					}
					seen[m] = true
				}
				for i := 1; i <= 3; i++ {
					if !seen[fmt.Sprintf("%s-%d", mark, i)] {
						t.Errorf("jobs worked %q; want %s-1 to -3 among them", got.Seen, mark)
					}
				}
			})
		}
	}
}
