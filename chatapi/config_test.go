package chatapi

import (
	"strings"
	"testing"
)

func TestConfigRefusesWhatCannotWork(t *testing.T) {
	good := Config{
		ProxyDSN:      "postgres://127.0.0.1:6432/chat",
		ServiceSecret: []byte(strings.Repeat("s", 32)),
		OperatorToken: strings.Repeat("t", 16),
	}
	for name, mutate := range map[string]func(*Config){
		"no proxy DSN":        func(c *Config) { c.ProxyDSN = "" },
		"unparsable DSN":      func(c *Config) { c.ProxyDSN = "postgres://%zz" },
		"short secret":        func(c *Config) { c.ServiceSecret = []byte("short") },
		"short token":         func(c *Config) { c.OperatorToken = "short" },
		"negative pool limit": func(c *Config) { c.PoolMaxConns = -1 },
	} {
		c := good
		mutate(&c)
		if _, err := New(c, nil); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	s, err := New(good, nil)
	if err != nil {
		t.Fatalf("valid config: %v", err)
	}
	s.Close()
}
