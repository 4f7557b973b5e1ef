package policy

import (
	"fmt"
	"testing"
)

// BenchmarkPolicy measures Check per statement kind; the figures are in
// Policy's doc comment. cache_miss parses a distinct statement each time,
// which is the cost a new statement pays once; txn_ cases are transaction
// mode, where the policy's rules and transaction mode share the lexical
// pass, the cache and the parse.
func BenchmarkPolicy(b *testing.B) {
	p := New()
	for _, bm := range []struct {
		name string
		mode Mode
		sql  string
	}{
		{"fast_path_select", SessionMode, "SELECT id, author_id, body, created_at FROM messages WHERE channel_id = $1 AND id < $2 ORDER BY id DESC LIMIT 50"},
		{"fast_path_insert", SessionMode, "INSERT INTO messages (channel_id, author_id, body) VALUES ($1, $2, $3) RETURNING id, created_at"},
		{"fast_path_refused_set_role", SessionMode, "SET ROLE tenant_b"},
		{"cache_hit", SessionMode, "SELECT t.oid, t.typname, n.nspname FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1"},
		{"cache_hit_refused", SessionMode, "SELECT query FROM pg_stat_activity"},
		{"txn_fast_path_update", TransactionMode, "UPDATE pgbench_accounts SET abalance = abalance + 4242 WHERE aid = 123456"},
		{"txn_cache_hit", TransactionMode, "SELECT t.oid, t.typname, n.nspname FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1"},
		{"txn_cache_hit_refused_set", TransactionMode, "SET statement_timeout = 0"},
	} {
		sql := []byte(bm.sql)
		p.Check(sql, Rules{}, bm.mode)
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Check(sql, Rules{}, bm.mode)
			}
		})
	}
	for _, mode := range []Mode{SessionMode, TransactionMode} {
		name := "cache_miss"
		if mode == TransactionMode {
			name = "txn_cache_miss_refused_set"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			sqls := make([][]byte, b.N)
			for i := range sqls {
				if mode == TransactionMode {
					sqls[i] = fmt.Appendf(nil, "SET statement_timeout = %d", i)
				} else {
					sqls[i] = fmt.Appendf(nil, "SELECT t.oid, t.typname FROM pg_catalog.pg_type t WHERE t.oid = %d", i)
				}
			}
			b.ResetTimer()
			for i := range b.N {
				p.Check(sqls[i], Rules{}, mode)
			}
		})
	}
}

// BenchmarkChannels measures what Channels adds to a statement of a
// shared- or schema-tier session after Check, on a shared, loaded 2-core
// AMD EPYC VM (go test -run '^$' -bench Channels -benchmem -count 3
// ./policy/, medians): ~290 ns and 0 allocs for the 110-byte keyset
// SELECT (no channel word: one scan; two containsFold scans took ~890
// ns), ~190 ns and 0 allocs for a cached pg_notify call (the scan, then
// its cached facts), ~11.6 µs and 13 allocs for NOTIFY, which is parsed
// again to be rewritten. The proxy calls it only in sessions with a
// namespace, for Query and Parse messages.
func BenchmarkChannels(b *testing.B) {
	p := New()
	for _, bm := range []struct{ name, sql string }{
		{"no_channel_words", "SELECT id, author_id, body, created_at FROM messages WHERE channel_id = $1 AND id < $2 ORDER BY id DESC LIMIT 50"},
		{"pg_notify_cached", "SELECT pg_notify('jobs', $1)"},
		{"notify_rewritten", "NOTIFY jobs, 'payload'"},
	} {
		sql := []byte(bm.sql)
		p.Check(sql, Rules{}, SessionMode)
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Channels(sql, "0123456789abcdef.")
			}
		})
	}
}
