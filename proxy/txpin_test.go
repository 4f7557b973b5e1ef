package proxy

import (
	"encoding/json"
	"testing"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/pool"
)

func TestPinLimitFromTenantSettingConfigOrPoolShare(t *testing.T) {
	manager := func(cfg pool.Config) Backends {
		m, err := pool.NewManager(cfg, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	defaults := manager(pool.Config{})
	for _, tt := range []struct {
		name     string
		settings string
		def      int
		backends Backends
		want     int
	}{
		{"pool default: a quarter of half of 20", "", 0, defaults, 2},
		{"small pool: at least 1", "", 0, manager(pool.Config{MaxConnsPerKey: 2}), 1},
		{"uncapped tenant share: a quarter of the pool", "", 0, manager(pool.Config{MaxConnsPerKey: 40, MaxConnsPerTenant: -1}), 10},
		{"proxy default", "", 3, defaults, 3},
		{"proxy default: no cap", "", -1, defaults, 0},
		{"tenant setting wins", `{"max_pinned_conns": 5}`, 3, defaults, 5},
		{"tenant setting: no cap", `{"max_pinned_conns": -1}`, 3, defaults, 0},
		{"other settings keep the default", `{"pool_mode": "transaction"}`, 3, defaults, 3},
		{"malformed setting keeps the default", `{"max_pinned_conns": "many"}`, 3, defaults, 3},
	} {
		tn := &catalog.Tenant{Subdomain: "acme"}
		if tt.settings != "" {
			tn.Settings = json.RawMessage(tt.settings)
		}
		if got := pinLimit(tn, tt.def, tt.backends); got != tt.want {
			t.Errorf("%s: %d; want %d", tt.name, got, tt.want)
		}
	}
}
