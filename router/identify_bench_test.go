package router_test

import (
	"testing"

	"github.com/tenantproxy/tenantproxy/router"
)

// BenchmarkIdentify is the per-connection cost of naming the tenant from
// the startup packet, for each source and for options that carry settings
// besides the tenant. It runs once per client connection, not per query.
//
// go test -run '^$' -bench Identify -benchmem ./router/ (2-core dev
// machine, Go 1.26):
//
//	user                   215 ns/op   48 B/op   1 allocs/op
//	options                682 ns/op  160 B/op   7 allocs/op
//	options_with_settings 2335 ns/op  732 B/op  19 allocs/op
//	sni                    320 ns/op   48 B/op   1 allocs/op
//	sni_and_user_agree     396 ns/op   48 B/op   1 allocs/op
//
// Small next to the SCRAM exchange and the server connection each login
// also pays, so not worth optimising.
func BenchmarkIdentify(b *testing.B) {
	cfg := router.IdentifyConfig{BaseDomain: "db.example.com"}
	for _, bc := range []struct {
		name string
		s    router.Startup
	}{
		{"user", router.Startup{User: "alice.acme"}},
		{"options", router.Startup{User: "alice", Options: "-c tenant=acme"}},
		{"options_with_settings", router.Startup{User: "alice", Options: "-c tenant=acme -c statement_timeout=5s --search_path=app"}},
		{"sni", router.Startup{ServerName: "acme.db.example.com", User: "alice"}},
		{"sni_and_user_agree", router.Startup{ServerName: "acme.db.example.com", User: "alice.acme"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := router.Identify(cfg, bc.s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
