package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestServeStartupCapFlags: the start-up caps reach proxy.Config from
// their flags, TENANTPROXY_* variables and the YAML file, with the
// proxy's defaults when nothing sets them.
func TestServeStartupCapFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tp.yaml")
	if err := os.WriteFile(file, []byte("max-startup-conns-per-addr: 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		args          []string
		env           map[string]string
		path          string
		total, perAdr int
	}{
		{name: "defaults", total: 1000, perAdr: 100},
		{name: "flags", args: []string{"--max-startup-conns=-1", "--max-startup-conns-per-addr=3"}, total: -1, perAdr: 3},
		{name: "environment and file", env: map[string]string{"TENANTPROXY_MAX_STARTUP_CONNS": "50"}, path: file, total: 50, perAdr: 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, f := buildServeCommand(&globals{})
			if err := configure(cmd, tc.args, tc.env, tc.path); err != nil {
				t.Fatal(err)
			}
			cfg := f.proxyConfig(nil, nil)
			if cfg.MaxStartupConns != tc.total || cfg.MaxStartupConnsPerAddr != tc.perAdr {
				t.Fatalf("MaxStartupConns %d, MaxStartupConnsPerAddr %d; want %d, %d", cfg.MaxStartupConns, cfg.MaxStartupConnsPerAddr, tc.total, tc.perAdr)
			}
		})
	}
}
