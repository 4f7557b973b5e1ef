package policy

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// chainShapes nest through list separators (',', AND, WHEN…), which
// nesting must not take for the end of a chain.
var chainShapes = []struct {
	name string
	sql  func(n int) string
}{
	{"UNION of lists", func(n int) string { return "SELECT 1, 2" + strings.Repeat(" UNION SELECT 1, 2 WHERE a AND b", n) }},
	{"JOIN ON AND", func(n int) string { return "SELECT * FROM t" + strings.Repeat(" JOIN t ON a AND b", n) }},
	{"CASE in AND", func(n int) string {
		return "SELECT " + strings.Repeat("CASE WHEN true AND ", n) + "true" + strings.Repeat(" THEN 1 END", n)
	}},
	{"CASE in ELSE", func(n int) string {
		return "SELECT " + strings.Repeat("CASE WHEN a THEN 1 ELSE ", n) + "1" + strings.Repeat(" END", n)
	}},
	{"sub-selects in lists", func(n int) string {
		return "SELECT " + strings.Repeat("1, (SELECT 2, ", n) + "1" + strings.Repeat(")", n)
	}},
	{"operator comment", func(n int) string {
		return "SELECT 1 +-- it's a comment, not a string\n" + strings.Repeat("(", n) + "1" + strings.Repeat(")", n)
	}},
}

// TestNestingCountsEveryLevel: for every shape, nesting counts at least
// one per level, so no shape the parser accepts gets past MaxNesting
// levels by being counted low.
func TestNestingCountsEveryLevel(t *testing.T) {
	shapes := append(append([]struct {
		name string
		sql  func(n int) string
	}{}, deepShapes...), chainShapes...)
	for _, s := range shapes {
		for _, n := range []int{1, 2, 10, 100, 999} {
			if got := nesting([]byte(s.sql(n)), 1<<30); got < n {
				t.Errorf("%s, %d deep: nesting %d; want at least %d", s.name, n, got, n)
			}
		}
		if !tooDeep([]byte(s.sql(MaxNesting))) {
			t.Errorf("%s, %d deep: not too deep", s.name, MaxNesting)
		}
	}
}

func TestNestingIgnoresWhatIsNotCode(t *testing.T) {
	deep := strings.Repeat("(", 3000)
	for _, sql := range []string{
		"SELECT '" + deep + "'",
		"SELECT E'\\'" + deep + "'",
		`SELECT "` + deep + `"`,
		"SELECT 1 -- " + deep + "\n",
		"SELECT 1 /* " + deep + " /* nested */ " + deep + " */",
		"SELECT $$" + deep + "$$",
		"SELECT $fn$ $x$ " + deep + " $fn$",
		"SELECT 1; SELECT 2; " + strings.Repeat("SELECT (1 + 2); ", 3000),
	} {
		if got := nesting([]byte(sql), 1<<30); got > 10 {
			t.Errorf("nesting(%.40q…) = %d; want what is outside strings, comments and quotes", sql, got)
		}
	}
}

// TestNestingAllowsBigFlatStatements: length is not depth.
func TestNestingAllowsBigFlatStatements(t *testing.T) {
	n := 5000
	list := strings.TrimSuffix(strings.Repeat("1, ", n), ", ")
	for name, sql := range map[string]string{
		"IN list":       "SELECT pg_typeof(x) FROM t WHERE id IN (" + list + ")",
		"OR chain":      "SELECT pg_typeof(x) FROM t WHERE " + strings.TrimSuffix(strings.Repeat("a = 1 OR b = 2 AND c = 3 OR ", n), " OR "),
		"CASE arms":     "SELECT CASE" + strings.Repeat(" WHEN a = 1 THEN 'x'", n) + " ELSE 'y' END",
		"VALUES rows":   "INSERT INTO t VALUES " + strings.TrimSuffix(strings.Repeat("(1, 'a', now()), ", n), ", "),
		"target list":   "SELECT " + strings.TrimSuffix(strings.Repeat("pg_typeof(a + b), ", n), ", ") + " FROM t",
		"statements":    strings.Repeat("SELECT pg_typeof((1 + 2) * 3); ", n),
		"window frames": "SELECT sum(x) OVER (ORDER BY y ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)" + strings.Repeat(", 1", n),
	} {
		if tooDeep([]byte(sql)) {
			t.Errorf("%s: refused as too deep (nesting %d)", name, nesting([]byte(sql), 1<<30))
		}
	}
}

// TestPolicyRefusesDeepStatementsBeforeParsing: 30,000 levels of every
// shape, which crashed the process in the C parser before the bound,
// get ReasonTooComplex in both modes and every tier, and the cached
// facts say the same the second time.
func TestPolicyRefusesDeepStatementsBeforeParsing(t *testing.T) {
	p := New()
	for _, s := range append(append([]struct {
		name string
		sql  func(n int) string
	}{}, deepShapes...), chainShapes...) {
		// PREPARE is no fast-path lead: the text goes to the parser.
		sql := []byte("PREPARE p AS " + s.sql(30000))
		for _, tier := range tiers {
			for _, m := range []Mode{SessionMode, TransactionMode} {
				if got := p.Check(sql, DefaultRules(tier), m); got != ReasonTooComplex {
					t.Errorf("%s, %s tier, %s mode: %q; want ReasonTooComplex", s.name, tier, m, got)
				}
			}
		}
	}
	// Well beyond what anyone writes, and within the bound.
	for name, sql := range map[string]string{
		"300 nested sub-selects": "PREPARE p AS SELECT " + strings.Repeat("(SELECT ", 300) + "1" + strings.Repeat(")", 300),
		"400 chained additions":  "PREPARE p AS SELECT 1" + strings.Repeat(" + 1", 400),
		"900 UNIONs":             "PREPARE p AS SELECT 1" + strings.Repeat(" UNION SELECT 1", 900),
	} {
		if got := p.Check([]byte(sql), Rules{}, SessionMode); got != "" {
			t.Errorf("%s: %q; want allowed", name, got)
		}
	}
}

func TestPolicyBoundsNestedFunctionBodies(t *testing.T) {
	body := "SELECT 1"
	nest := func(levels int) string {
		sql := body
		for i := range levels {
			tag := "$f" + strconv.Itoa(i) + "$"
			sql = "CREATE FUNCTION f" + strconv.Itoa(i) + "() RETURNS int LANGUAGE sql AS " + tag + sql + tag
		}
		return sql
	}
	p := New()
	r := DefaultRules(catalog.TierDatabase)
	if got := p.Check([]byte(nest(maxBodyNesting)), r, SessionMode); got != "" {
		t.Errorf("%d nested bodies: %q; want allowed for a tenant with DDL", maxBodyNesting, got)
	}
	if got := p.Check([]byte(nest(maxBodyNesting+1)), r, SessionMode); got != ReasonTooComplex {
		t.Errorf("%d nested bodies: %q; want ReasonTooComplex", maxBodyNesting+1, got)
	}
	// A deep expression in a body is bounded when the body is parsed.
	deep := "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT " + strings.Repeat("(SELECT ", 30000) + "1" + strings.Repeat(")", 30000) + " $$"
	if got := p.Check([]byte(deep), r, SessionMode); got != ReasonTooComplex {
		t.Errorf("deep body: %q; want ReasonTooComplex", got)
	}
}

func TestReasonTooComplexIsReportedAs54001(t *testing.T) {
	if c := CodeOf(ReasonTooComplex); c != pgerr.CodeStatementTooComplex || c.SQLState() != "54001" || c.Fatal() {
		t.Errorf("CodeOf(ReasonTooComplex) = %s (%s, fatal %v); want ERROR 54001", c, c.SQLState(), c.Fatal())
	}
	if c := CodeOf(reasonRole); c != pgerr.CodeStatementRefused {
		t.Errorf("CodeOf(reasonRole) = %s; want CodeStatementRefused", c)
	}
	for _, n := range []int{MaxNesting, maxBodyNesting} {
		if !strings.Contains(ReasonTooComplex, " "+strconv.Itoa(n)) {
			t.Errorf("ReasonTooComplex does not state the limit %d: %q", n, ReasonTooComplex)
		}
	}
}

// BenchmarkNesting: the bound's cost on a cache miss, beside the parse's.
func BenchmarkNesting(b *testing.B) {
	sql := []byte("SELECT n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','v','m','S','f','') AND n.nspname <> 'pg_catalog' AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2")
	b.ReportAllocs()
	for b.Loop() {
		nesting(sql, MaxNesting)
	}
}
