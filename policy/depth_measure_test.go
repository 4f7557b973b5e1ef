package policy

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// deepShapes build statements nested n deep in the ways that make the
// deepest parse trees per byte. The e2e test and the table tests use
// them too.
var deepShapes = []struct {
	name string
	sql  func(n int) string
}{
	{"parentheses", func(n int) string { return "SELECT " + strings.Repeat("(", n) + "1" + strings.Repeat(")", n) }},
	{"sub-selects", func(n int) string { return "SELECT " + strings.Repeat("(SELECT ", n) + "1" + strings.Repeat(")", n) }},
	{"ARRAY", func(n int) string { return "SELECT " + strings.Repeat("ARRAY[", n) + "1" + strings.Repeat("]", n) }},
	{"function calls", func(n int) string { return "SELECT " + strings.Repeat("f(", n) + "1" + strings.Repeat(")", n) }},
	{"CASE", func(n int) string {
		return "SELECT " + strings.Repeat("CASE WHEN true THEN ", n) + "1" + strings.Repeat(" END", n)
	}},
	{"additions", func(n int) string { return "SELECT 1" + strings.Repeat("+1", n) }},
	{"casts", func(n int) string { return "SELECT 1" + strings.Repeat("::int", n) }},
	{"NOT", func(n int) string { return "SELECT " + strings.Repeat("NOT ", n) + "true" }},
	{"unary minus", func(n int) string { return "SELECT " + strings.Repeat("- ", n) + "1" }},
	{"UNION", func(n int) string { return "SELECT 1" + strings.Repeat(" UNION SELECT 1", n) }},
	{"JOIN", func(n int) string { return "SELECT * FROM t" + strings.Repeat(" JOIN t ON true", n) }},
	{"BETWEEN", func(n int) string {
		return "SELECT 1 BETWEEN 0 AND " + strings.Repeat("NOT 1 BETWEEN 0 AND ", n) + "1"
	}},
	{"IN sub-selects", func(n int) string {
		return "SELECT " + strings.Repeat("1 IN (SELECT ", n) + "1" + strings.Repeat(")", n)
	}},
	{"COLLATE", func(n int) string { return "SELECT 'a'" + strings.Repeat(` COLLATE "C"`, n) }},
	{"json", func(n int) string { return "SELECT j" + strings.Repeat("->'a'", n) }},
}

// When the test binary runs as the child of TestMeasureParserStackDepth,
// its main goroutine keeps the main thread, so the parse runs on a
// thread Go created, as a connection's goroutine in the proxy does (the
// main thread's stack is the process's, which may differ).
func init() {
	if os.Getenv("TENANTPROXY_PARSE_CHILD") != "" {
		runtime.LockOSThread()
	}
}

// TestParseChild parses one statement for TestMeasureParserStackDepth:
// it crashes the process or returns.
func TestParseChild(t *testing.T) {
	spec := os.Getenv("TENANTPROXY_PARSE_CHILD")
	if spec == "" {
		t.Skip("run by TestMeasureParserStackDepth")
	}
	name, nStr, _ := strings.Cut(spec, "|")
	n, _ := strconv.Atoi(nStr)
	for _, s := range deepShapes {
		if s.name == name {
			done := make(chan struct{})
			go func() {
				defer close(done)
				pg_query.Parse(s.sql(n))
			}()
			<-done
			return
		}
	}
	t.Fatalf("no shape %q", name)
}

// TestMeasureParserStackDepth finds, per shape, the deepest statement the
// C parser survives on a goroutine, with the thread stack RLIMIT_STACK
// gives (8 MiB by default; "unlimited" gives glibc's 2 MiB), by running
// TestParseChild in child processes. It is how MaxNesting was chosen; set
// TENANTPROXY_MEASURE_STACK to a list of ulimit -s values (e.g.
// "8192 unlimited") to run it.
func TestMeasureParserStackDepth(t *testing.T) {
	limits := os.Getenv("TENANTPROXY_MEASURE_STACK")
	if limits == "" {
		t.Skip("set TENANTPROXY_MEASURE_STACK, e.g. \"8192 unlimited\"")
	}
	survives := func(stack, shape string, n int) bool {
		cmd := exec.Command("sh", "-c", "ulimit -s "+stack+" && exec \"$0\" -test.run '^TestParseChild$'", os.Args[0])
		cmd.Env = append(os.Environ(), "TENANTPROXY_PARSE_CHILD="+shape+"|"+strconv.Itoa(n))
		out, err := cmd.CombinedOutput()
		if err != nil && !strings.Contains(string(out), "SIGSEGV") && !strings.Contains(err.Error(), "signal") {
			t.Fatalf("%s %d: %v\n%s", shape, n, err, out)
		}
		return err == nil
	}
	// Bison's stack (YYMAXDEPTH 10,000 entries) turns bracket and prefix
	// nesting much past 10,000 into a syntax error ("memory exhausted")
	// before any tree is built, so a shape can crash at some depth and
	// not at a greater one: probe rising depths for the first crash, then
	// narrow it down.
	var probes []int
	for n := 256; n <= 12288; n += 256 {
		probes = append(probes, n)
	}
	probes = append(probes, 16384, 24576, 32768, 49152, 65536, 1<<18)
	for _, stack := range strings.Fields(limits) {
		for _, s := range deepShapes {
			lo, hi := 1, 0
			for _, n := range probes {
				if !survives(stack, s.name, n) {
					hi = n
					break
				}
				lo = n
			}
			if hi == 0 {
				t.Logf("ulimit -s %s: %-15s survives every depth probed up to %d", stack, s.name, lo)
				continue
			}
			for hi-lo > max(lo/100, 1) {
				mid := (lo + hi) / 2
				if survives(stack, s.name, mid) {
					lo = mid
				} else {
					hi = mid
				}
			}
			m := nesting([]byte(s.sql(lo)), 1<<30)
			t.Logf("ulimit -s %s: %-15s survives %6d, crashes by %6d; nesting counts %6d at %d", stack, s.name, lo, hi, m, lo)
		}
	}
}
