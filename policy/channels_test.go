package policy

import (
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// TestChannelsRewritesOnlyChannelStatements: the channel of LISTEN,
// UNLISTEN and NOTIFY moves into the namespace however the client spelled
// it, the payload and the other statements keep their meaning, and a
// text without such statements is left alone.
func TestChannelsRewritesOnlyChannelStatements(t *testing.T) {
	const prefix = "0123456789abcdef."
	p := New()
	for _, tt := range []struct{ in, want string }{
		{"LISTEN jobs", `LISTEN "0123456789abcdef.jobs"`},
		{`listen "Jobs"`, `LISTEN "0123456789abcdef.Jobs"`},
		{`LISTEN U&"j\006fbs"`, `LISTEN "0123456789abcdef.jobs"`},
		{`UNLISTEN "a""b"`, `UNLISTEN "0123456789abcdef.a""b"`},
		{"UNLISTEN *", "UNLISTEN *"},
		{"NOTIFY jobs, 'it''s'", `NOTIFY "0123456789abcdef.jobs", 'it''s'`},
		{`NOTIFY jobs, E'back\\slash'`, `NOTIFY "0123456789abcdef.jobs", E'back\\slash'`},
		{"SELECT 1; NOTIFY jobs; SELECT 'NOTIFY x'", `SELECT 1;NOTIFY "0123456789abcdef.jobs"; SELECT 'NOTIFY x'`},
		// Another tenant's prefix is only part of this tenant's channel.
		{`LISTEN "fedcba9876543210.jobs"`, `LISTEN "0123456789abcdef.fedcba9876543210.jobs"`},
		{"SELECT pg_notify('jobs', 'x')", ""},
		{"SELECT 1", ""},
	} {
		p.Check([]byte(tt.in), Rules{}, SessionMode)
		got, err := p.Channels([]byte(tt.in), prefix)
		if err != nil || string(got) != tt.want {
			t.Errorf("Channels(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	long := "LISTEN " + strings.Repeat("c", 47)
	if _, err := p.Channels([]byte(long), prefix); err == nil || err.Code.SQLState() != "22023" {
		t.Errorf("Channels of a 47-byte channel: %v; want PostgreSQL's 22023 channel name too long", err)
	}
	if got, err := p.Channels([]byte("LISTEN "+strings.Repeat("c", 46)), prefix); err != nil || len(got) == 0 {
		t.Errorf("Channels of a 46-byte channel: %q, %v; want it rewritten", got, err)
	}
}

// FuzzChannels: whatever text the policy allows, Channels leaves a text
// that parses into the same number of statements, in which every
// channel a LISTEN, UNLISTEN or NOTIFY names is in the namespace.
func FuzzChannels(f *testing.F) {
	for _, s := range []string{
		"LISTEN jobs", `NOTIFY "a""b", 'x'`, "SELECT 1; UNLISTEN x; NOTIFY y", `LISTEN U&"\0061"`,
		"/* LISTEN */ SELECT 'NOTIFY x'", "NOTIFY jobs, E'\\''", "SELECT pg_notify('a', 'b')",
	} {
		f.Add(s)
	}
	const prefix = "0123456789abcdef."
	p := New()
	f.Fuzz(func(t *testing.T, sql string) {
		if p.Check([]byte(sql), Rules{}, SessionMode) != "" {
			return
		}
		out, err := p.Channels([]byte(sql), prefix)
		if err != nil || out == nil {
			return
		}
		before, err1 := pg_query.Parse(sql)
		after, err2 := pg_query.Parse(string(out))
		if err1 != nil || err2 != nil || len(before.Stmts) != len(after.Stmts) {
			t.Fatalf("Channels(%q) = %q: parses %v, %v", sql, out, err1, err2)
		}
		for _, s := range after.Stmts {
			var channel string
			switch n := s.Stmt.GetNode().(type) {
			case *pg_query.Node_ListenStmt:
				channel = n.ListenStmt.Conditionname
			case *pg_query.Node_UnlistenStmt:
				channel = n.UnlistenStmt.Conditionname
				if channel == "" {
					continue
				}
			case *pg_query.Node_NotifyStmt:
				channel = n.NotifyStmt.Conditionname
			default:
				continue
			}
			if !strings.HasPrefix(channel, prefix) {
				t.Fatalf("Channels(%q) = %q: channel %q outside the namespace", sql, out, channel)
			}
		}
	})
}

// TestChannelsParsesNoPlainDML: DML the lexical pass allows is never
// parsed for its channels, however often the words appear in it.
func TestChannelsParsesNoPlainDML(t *testing.T) {
	p := New()
	sql := []byte("INSERT INTO messages (body) VALUES ('please LISTEN and NOTIFY " + strings.Repeat("x", 2<<20) + "')")
	if p.Check(sql, Rules{}, SessionMode) != "" {
		t.Fatal("the INSERT was refused")
	}
	before := p.parses.Load()
	if out, err := p.Channels(sql, "0123456789abcdef."); out != nil || err != nil {
		t.Errorf("Channels = %.40q, %v; want nothing to rewrite", out, err)
	}
	if p.parses.Load() != before {
		t.Error("Channels parsed plain DML")
	}
}
