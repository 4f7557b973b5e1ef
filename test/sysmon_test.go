package test

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestServeKeepsSysmonAwake checks that the tenantproxy binary serves
// with the Go runtime's monitor kept out of its deep sleep (GODEBUG
// schedtrace, cmd/tenantproxy/sysmon.go), in the process it was started
// as, and that an operator's own schedtrace setting stands.
func TestServeKeepsSysmonAwake(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	e := newProxyEnv(t)
	bin := buildTenantproxy(t)
	for _, tc := range []struct{ env, want string }{
		{"", "schedtrace=2147483647"},
		{"schedtrace=0", "schedtrace=0"},
	} {
		t.Run("GODEBUG="+tc.env, func(t *testing.T) {
			t.Setenv("GODEBUG", tc.env)
			p := startProxyProcess(t, bin, "--catalog-dsn", e.catalogDSN, "--auth", proxy.AuthTrust)
			environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.cmd.Process.Pid))
			if err != nil {
				t.Fatal(err)
			}
			var godebug string
			for _, kv := range bytes.Split(environ, []byte{0}) {
				if v, ok := strings.CutPrefix(string(kv), "GODEBUG="); ok {
					godebug = v
				}
			}
			if godebug != tc.want {
				t.Fatalf("serve runs with GODEBUG=%q; want %q", godebug, tc.want)
			}
		})
	}
}
