package tierddl

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
	"google.golang.org/protobuf/proto"
)

// Tier is the isolation tier a migration is transformed for. Its values
// are those of migrations.Kind for the three tenant tiers.
type Tier string

// The tiers.
const (
	Shared   Tier = "shared"
	Schema   Tier = "schema"
	Database Tier = "database"
)

// Names the transformed SQL uses. TenantGUC and ServingRole must equal
// migrations' constants of the same names (a test holds them equal); they
// are repeated here because package migrations runs this package's output
// and so cannot be imported by it.
const (
	// TenantGUC is the setting holding the session's tenant id.
	TenantGUC = "app.tenant_id"
	// ServingRole is the role tenant traffic runs as.
	ServingRole = "tenantproxy_serving"
	// TenantColumn is the column the shared tier adds to every table. A
	// migration may not declare, alter, rename or drop a column of that name.
	TenantColumn = "tenant_id"
	// PolicyName is the row-level security policy the shared tier puts on
	// every table, the same name the chat schema's policies have.
	PolicyName = "tenant_isolation"
)

// tenantExpr is the session's tenant, NULL when unset or reset to ”: every
// comparison with it is then NULL, so a session without a tenant sees no
// row and writes none (fail closed).
var tenantExpr = "NULLIF(current_setting(" + quoteLiteral(TenantGUC) + ", true), '')"

// Transform returns migration sql in the form tier needs. The schema and
// database tiers give each tenant objects of its own, so there the
// migration applies as written and Transform returns sql unchanged. For the
// shared tier it returns the statements rewritten and completed as the
// package documentation says, one per line-terminated statement, without
// comments; a statement it cannot make safe fails the whole migration with
// an *Error.
func Transform(tier Tier, sql string) (string, error) {
	switch tier {
	case Schema, Database:
		return sql, nil
	case Shared:
	default:
		return "", fmt.Errorf("tierddl: unknown tier %q", tier)
	}
	if nested(sql) > maxNesting {
		return "", fmt.Errorf("tierddl: the migration nests brackets more than %d deep, beyond what the SQL parser's stack is known to hold", maxNesting)
	}
	tree, err := pg_query.Parse(sql)
	if err != nil {
		var perr *parser.Error
		if errors.As(err, &perr) && perr.Cursorpos > 0 {
			return "", fmt.Errorf("tierddl: line %d: %w", lineOfChar(sql, perr.Cursorpos), err)
		}
		return "", fmt.Errorf("tierddl: %w", err)
	}
	var out strings.Builder
	for i, raw := range tree.Stmts {
		orig := proto.Clone(raw.Stmt)
		stmts, err := sharedStatement(raw.Stmt)
		if err == nil && proto.Equal(orig, stmts[0]) {
			// Unchanged: keep the adopter's text, comments and all.
			verbatim(&out, stmtText(sql, raw))
			stmts = stmts[1:]
		}
		if err == nil {
			err = deparseTo(&out, tree.Version, stmts)
		}
		if err != nil {
			return "", newError(sql, i+1, raw, err)
		}
	}
	return out.String(), nil
}

// lineOfChar is the 1-based line of sql's pos'th character (1-based, as
// the parser counts).
func lineOfChar(sql string, pos int) int {
	line := 1
	for _, r := range sql {
		if pos--; pos <= 0 {
			break
		}
		if r == '\n' {
			line++
		}
	}
	return line
}

// stmtText is raw's text in sql, from its first token.
func stmtText(sql string, raw *pg_query.RawStmt) string {
	start, end := int(raw.StmtLocation), len(sql)
	if raw.StmtLen > 0 {
		end = start + int(raw.StmtLen)
	}
	return strings.TrimRightFunc(sql[skipSpaceAndComments(sql, start, end):end], unicode.IsSpace)
}

// verbatim writes one statement's text to out, ended by ";\n" on a line
// of its own if the text's last line could end in a comment.
func verbatim(out *strings.Builder, text string) {
	out.WriteString(text)
	if strings.Contains(text[strings.LastIndexByte(text, '\n')+1:], "--") {
		out.WriteByte('\n')
	}
	out.WriteString(";\n")
}

// Error is a statement Transform refused or could not rewrite.
type Error struct {
	// Statement is the statement's 1-based position in the migration.
	Statement int
	// Line is the 1-based line the statement starts on.
	Line int
	// Text is the statement, shortened to its first line or 80 bytes.
	Text string
	// Reason says why the statement was refused.
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("tierddl: statement %d at line %d (%s): %s", e.Statement, e.Line, e.Text, e.Reason)
}

func newError(sql string, n int, raw *pg_query.RawStmt, reason error) *Error {
	start := skipSpaceAndComments(sql, int(raw.StmtLocation), len(sql))
	text := stmtText(sql, raw)
	if i := strings.IndexByte(text, '\n'); i >= 0 {
		text = text[:i] + " …"
	}
	if len(text) > 80 {
		text = strings.ToValidUTF8(text[:80], "") + " …"
	}
	return &Error{Statement: n, Line: 1 + strings.Count(sql[:start], "\n"), Text: text, Reason: reason.Error()}
}

// skipSpaceAndComments returns the offset of the first byte in sql[i:end]
// that is neither white space nor in a comment: a statement's location
// starts right after the previous statement's semicolon.
func skipSpaceAndComments(sql string, i, end int) int {
	for i < end {
		switch {
		case strings.ContainsRune(" \t\r\n\f", rune(sql[i])):
			i++
		case strings.HasPrefix(sql[i:end], "--"):
			nl := strings.IndexByte(sql[i:end], '\n')
			if nl < 0 {
				return end
			}
			i += nl + 1
		case strings.HasPrefix(sql[i:end], "/*"):
			c := strings.Index(sql[i+2:end], "*/")
			if c < 0 {
				return end
			}
			i += c + 4
		default:
			return i
		}
	}
	return i
}

// deparseTo writes stmts, trees of the parser's version, to out as SQL,
// each ended by ";\n".
func deparseTo(out *strings.Builder, version int32, stmts []*pg_query.Node) error {
	for _, s := range stmts {
		text, err := pg_query.Deparse(&pg_query.ParseResult{Version: version, Stmts: []*pg_query.RawStmt{{Stmt: s}}})
		if err == nil {
			err = roundTrips(version, text)
		}
		if err != nil {
			return fmt.Errorf("the rewritten statement cannot be written back as SQL: %w", err)
		}
		out.WriteString(text)
		out.WriteString(";\n")
	}
	return nil
}

// roundTrips checks text, deparsed from a tree, against the deparser's
// known slips: text that does not parse, or that deparses differently
// once parsed, would not be the statement the tree holds.
func roundTrips(version int32, text string) error {
	tree, err := pg_query.Parse(text)
	if err != nil {
		return err
	}
	tree.Version = version
	again, err := pg_query.Deparse(tree)
	if err != nil {
		return err
	}
	if again != text {
		return fmt.Errorf("it reads back as %q", again)
	}
	return nil
}

// maxNesting bounds bracket nesting: the parser's C code recurses once or
// more per level on a thread stack nothing checks, so a deep enough text
// would crash the process (see package policy's depth.go for measurements;
// migrations come from the operator, so brackets, the shape a generated
// file nests deepest, are what is bounded here).
const maxNesting = 1000

// nested returns the deepest bracket nesting in sql, counting brackets in
// literals and comments too, which can only overestimate.
func nested(sql string) int {
	depth, deepest := 0, 0
	for i := 0; i < len(sql); i++ {
		switch sql[i] {
		case '(', '[':
			depth++
			deepest = max(deepest, depth)
		case ')', ']':
			depth = max(depth-1, 0)
		}
	}
	return deepest
}

// parseStmts parses SQL the package itself wrote.
func parseStmts(sql string) ([]*pg_query.Node, error) {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return nil, fmt.Errorf("tierddl: internal statement %q: %w", sql, err)
	}
	out := make([]*pg_query.Node, len(tree.Stmts))
	for i, s := range tree.Stmts {
		out[i] = s.Stmt
	}
	return out, nil
}

// refusal is a reason a statement cannot be made safe.
func refusal(format string, args ...any) error { return fmt.Errorf(format, args...) }

var errTenantColumn = errors.New(TenantColumn + " is the column the shared tier adds to every table: a migration may not declare, alter, rename or drop it")

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// relName is rel as SQL, schema-qualified as written.
func relName(rel *pg_query.RangeVar) string {
	if rel.Schemaname != "" {
		return quoteIdent(rel.Schemaname) + "." + quoteIdent(rel.Relname)
	}
	return quoteIdent(rel.Relname)
}
