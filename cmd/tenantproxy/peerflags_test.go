package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestServePeerFlags: --peer-id and --peer reach proxy.Config from the
// command line (repeated), TENANTPROXY_* variables (a comma list) and the
// YAML file (a list); malformed entries are errors.
func TestServePeerFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tp.yaml")
	if err := os.WriteFile(file, []byte("peer-id: 2\npeer: [\"1=10.0.0.1:6432\", \"2=10.0.0.2:6432\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	both := map[int]string{1: "10.0.0.1:6432", 2: "10.0.0.2:6432"}
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		path    string
		id      int
		peers   map[int]string
		wantErr bool
	}{
		{name: "none"},
		{name: "flags", args: []string{"--peer-id=1", "--peer", "1=10.0.0.1:6432", "--peer", "2=10.0.0.2:6432"}, id: 1, peers: both},
		{name: "environment", env: map[string]string{"TENANTPROXY_PEER_ID": "2", "TENANTPROXY_PEER": "1=10.0.0.1:6432,2=10.0.0.2:6432"}, id: 2, peers: both},
		{name: "file", path: file, id: 2, peers: both},
		{name: "no id", args: []string{"--peer", "10.0.0.1:6432"}, wantErr: true},
		{name: "one id, two addresses", args: []string{"--peer", "1=a:1", "--peer", "1=b:1"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, f := buildServeCommand(&globals{})
			err := configure(cmd, tc.args, tc.env, tc.path)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("accepted; peers %v", f.peers)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cfg := f.proxyConfig(nil, nil)
			if cfg.PeerID != tc.id || (len(cfg.Peers) > 0 || len(tc.peers) > 0) && !reflect.DeepEqual(cfg.Peers, tc.peers) {
				t.Fatalf("PeerID %d, Peers %v; want %d, %v", cfg.PeerID, cfg.Peers, tc.id, tc.peers)
			}
		})
	}
}
