package console

import (
	"strings"
	"testing"
)

func TestParseCommand(t *testing.T) {
	for _, tt := range []struct {
		q, cmd, arg string
		ok          bool
	}{
		{"SHOW POOLS", "SHOW", "pools", true},
		{"show pools;", "SHOW", "pools", true},
		{"  SHOW\tstats_totals ;  ", "SHOW", "stats_totals", true},
		{"PAUSE", "PAUSE", "", true},
		{"pause Acme-Corp", "PAUSE", "acme-corp", true},
		{`KILL "acme"`, "KILL", "acme", true},
		{`KILL "we""ird"`, "KILL", `we"ird`, true},
		{"SHOW POOLS; SHOW LISTS", "", "", false},
		{"SELECT 1", "SELECT", "1", true}, // parsed; unknown to query
		{"SELECT 1, 2", "", "", false},
		{"PAUSE acme globex", "", "", false},
		{"KILL acme'; DROP", "", "", false},
		{`KILL ""`, "", "", false},
	} {
		cmd, arg, ok := parseCommand(tt.q)
		if cmd != tt.cmd || arg != tt.arg || ok != tt.ok {
			t.Errorf("parseCommand(%q) = %q, %q, %v; want %q, %q, %v", tt.q, cmd, arg, ok, tt.cmd, tt.arg, tt.ok)
		}
	}
}

// FuzzParseCommand: whatever the query, a parsed command is one word of
// letters and its argument has no quote left undoubled.
func FuzzParseCommand(f *testing.F) {
	for _, q := range []string{"SHOW POOLS;", `KILL "a""b"`, "PAUSE acme", " ; "} {
		f.Add(q)
	}
	f.Fuzz(func(t *testing.T, q string) {
		cmd, arg, ok := parseCommand(q)
		if !ok {
			return
		}
		if cmd == "" || strings.ToUpper(cmd) != cmd || strings.ContainsAny(cmd, " ;\"") {
			t.Fatalf("parseCommand(%q) gave command %q", q, cmd)
		}
		if strings.ContainsAny(arg, ";'") && !strings.Contains(q, `"`) {
			t.Fatalf("parseCommand(%q) gave unquoted argument %q", q, arg)
		}
	})
}
