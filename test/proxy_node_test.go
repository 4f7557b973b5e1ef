package test

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestNodePostgresThroughProxy runs test/node/client.js (node-postgres) as
// each tier's tenant: its own rows only, a named prepared statement reused,
// an error inside a transaction, and a refused SET ROLE that leaves the
// connection usable. The node modules come from `npm ci` in test/node,
// which test/run does.
func TestNodePostgresThroughProxy(t *testing.T) {
	node, err := exec.LookPath("node")
	modules := filepath.Join("node", "node_modules", "pg")
	if _, statErr := os.Stat(modules); err != nil || statErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("node or %s missing in CI (node: %v, modules: %v)", modules, err, statErr)
		}
		t.Skipf("node-postgres not installed (run npm ci in test/node): node %v, modules %v", err, statErr)
	}
	e := newProxyEnv(t)
	_, addr := e.startProxy(t, proxy.Config{})
	host, port, _ := net.SplitHostPort(addr)
	for _, tt := range tierTenants {
		t.Run(string(tt.tier)+"/"+tt.sub, func(t *testing.T) {
			cmd := exec.CommandContext(ctxT(t), node, filepath.Join("node", "client.js"))
			cmd.Env = append(os.Environ(), "TP_HOST="+host, "TP_PORT="+port, "TP_USER=alice."+tt.sub, "TP_PASSWORD="+tenantPassword, "TP_MARK="+tt.sub)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("node client: %v\n%s", err, stderr.String())
			}
			var got struct {
				Bodies            []string `json:"bodies"`
				DivisionError     string   `json:"divisionError"`
				SetRoleError      string   `json:"setRoleError"`
				CountAfterRefusal int      `json:"countAfterRefusal"`
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("node client printed %q: %v", out, err)
			}
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
