package policy

import (
	"strings"
	"testing"
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
