package policy

import (
	"fmt"
	"testing"
)

// BenchmarkPolicy measures Check per statement kind; the figures are in
// Policy's doc comment. cache_miss parses a distinct statement each time,
// which is the cost a new statement pays once.
func BenchmarkPolicy(b *testing.B) {
	p := New()
	for _, bm := range []struct{ name, sql string }{
		{"fast_path_select", "SELECT id, author_id, body, created_at FROM messages WHERE channel_id = $1 AND id < $2 ORDER BY id DESC LIMIT 50"},
		{"fast_path_insert", "INSERT INTO messages (channel_id, author_id, body) VALUES ($1, $2, $3) RETURNING id, created_at"},
		{"fast_path_refused_set_role", "SET ROLE tenant_b"},
		{"cache_hit", "SELECT t.oid, t.typname, n.nspname FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1"},
		{"cache_hit_refused", "SELECT query FROM pg_stat_activity"},
	} {
		sql := []byte(bm.sql)
		p.Check(sql)
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Check(sql)
			}
		})
	}
	b.Run("cache_miss", func(b *testing.B) {
		b.ReportAllocs()
		sqls := make([][]byte, b.N)
		for i := range sqls {
			sqls[i] = fmt.Appendf(nil, "SELECT t.oid, t.typname FROM pg_catalog.pg_type t WHERE t.oid = %d", i)
		}
		b.ResetTimer()
		for i := range b.N {
			p.Check(sqls[i])
		}
	})
}
