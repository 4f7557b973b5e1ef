package policy

import (
	"bytes"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// The parser (libpg_query through pg_query_go) turns its parse tree into
// a protobuf message by recursion in C, one or more C stack frames per
// level of the tree, on the stack of whichever thread the goroutine runs
// on, and nothing in it checks the stack's depth (libpg_query never sets
// PostgreSQL's stack base, so check_stack_depth is a no-op there). A
// statement nested deeply enough overflows that stack: SIGSEGV, and the
// whole proxy dies with every tenant's sessions. Go cannot recover from
// that, so the depth is bounded before the text reaches C.
//
// The bound is lexical (nesting) and errs on the side of counting too
// much: it must hold for every text the parser accepts, and a statement it
// refuses only gets PostgreSQL's own answer for a statement too complex
// (54001), which the server itself gives a few thousand levels down.

// MaxNesting bounds nesting, as nesting counts it, of a text the policy
// parses. Measured with TestMeasureParserStackDepth (2-core AMD EPYC VM,
// glibc 2.36, Go 1.26, pg_query_go v6.2.5; the parse on a goroutine, so
// on a thread Go created, whose stack glibc sizes from RLIMIT_STACK), the
// parser's C code needs up to about 355 bytes of stack per unit of that
// count in the costliest shapes (CASE in CASE, NOT NOT …, chained JOINs,
// nested sub-selects): the first crash came at a count of 2,947 with a
// 1 MiB stack, 5,907 with 2 MiB (glibc's default when RLIMIT_STACK is
// unlimited) and 23,685 with the usual 8 MiB, 23,700 chained additions
// deep. (Brackets and prefix operators much past 10,000 deep never reach
// the tree: the grammar's own stack overflows first, a syntax error.)
//
// 1,000 thus needs about 350 KiB, a third of 1 MiB and a sixth of 2 MiB;
// a thread stack under 1 MiB (ulimit -s below 1024) would need a lower
// bound. It admits some 330 nested sub-selects, 500 chained additions,
// almost 1,000 UNIONs or JOINs: more than statements written by hand or
// by ORMs nest, and less than PostgreSQL 15 runs with its default
// max_stack_depth (2 MB), which took 1,000 nested sub-selects and 3,000
// additions; sent 30,000 deep, the server answers 54001 stack depth
// limit exceeded, or for brackets 42601 memory exhausted, from its
// grammar's stack.
const MaxNesting = 1000

// ReasonTooComplex is the refusal of a statement nested deeper than
// MaxNesting. The proxy reports it as PostgreSQL reports a statement too
// complex for its stack, SQLSTATE 54001, rather than as a policy
// refusal: nothing about the statement is forbidden, and sent directly,
// a few times deeper, the server answers the same.
const ReasonTooComplex = "stack depth limit exceeded: the statement is nested too deeply for the proxy's SQL parser (brackets, sub-queries, CASE and chains of operators, UNION or JOIN count towards a limit of 1000; SQL function bodies may nest 8 deep)"

// CodeOf returns the code the proxy reports a refusal reason of Check
// with: pgerr.CodeStatementTooComplex for ReasonTooComplex,
// pgerr.CodeStatementRefused for every other reason.
func CodeOf(reason string) pgerr.Code {
	if reason == ReasonTooComplex {
		return pgerr.CodeStatementTooComplex
	}
	return pgerr.CodeStatementRefused
}

// tooDeep reports whether sql may nest deeper than MaxNesting (see
// nesting).
func tooDeep(sql []byte) bool { return nesting(sql, MaxNesting) > MaxNesting }

// nestFrame is one open bracket (parenthesis, square bracket, or CASE …
// END) while nesting reads a text.
type nestFrame struct {
	// chain counts the words that chain statements or relations to the
	// left in this frame (UNION, INTERSECT, EXCEPT, JOIN): each makes the
	// tree one level deeper however the list separators fall, and the
	// deepest of what they chain hangs below all of them.
	chain int
	// seg counts the tokens since the last list separator (',', AND,
	// OR, WHEN, THEN, ELSE), and segChild is the deepest frame closed
	// since then: within a list item, every operator or keyword may add a
	// level above what the item's brackets hold.
	seg, segChild int
	// best is the deepest list item so far of the current statement,
	// stmt the deepest earlier statement (';').
	best, stmt int
	// between counts the BETWEENs of the item still owed their AND,
	// which separates nothing: a BETWEEN's last operand can be NOT and
	// another BETWEEN, so a chain of them goes on across those ANDs.
	between int
	isCase  bool
}

func (f *nestFrame) endItem() {
	f.best = max(f.best, f.seg+f.segChild)
	f.seg, f.segChild, f.between = 0, 0, 0
}

func (f *nestFrame) endStatement() {
	f.endItem()
	f.stmt = max(f.stmt, f.chain+f.best)
	f.chain, f.best = 0, 0
}

// value is the frame's bound once it closes: one level for the bracket
// itself, then its deepest statement.
func (f *nestFrame) value() int {
	f.endStatement()
	return 1 + f.stmt
}

// nesting returns an upper bound, up to a constant factor, of the depth
// of sql's parse tree, or some value above limit as soon as that is
// certain. It reads the text the way fast does (scanner's rules for
// comments, strings, quoted identifiers and dollar quotes) and costs one
// pass and no allocation beyond the stack of open brackets, which it
// never lets grow past limit.
//
// Every level of a parse tree needs tokens that make it: an open bracket
// (sub-select, function call, ARRAY[…], row), CASE, or an operator or
// keyword applied to what is on one side of it. So a frame's bound is one
// for its bracket, plus the words that chain to the left across list
// items (UNION/INTERSECT/EXCEPT, JOIN), plus the deepest list item or
// chained operand, counted as all of its tokens (words and operators)
// plus its deepest inner frame. List separators reset the count because
// a list (target list, arguments, AND/OR, which the grammar flattens,
// CASE's arms) is one level whatever its length. A text the parser
// rejects may be over-counted; none it accepts is under-counted.
//
// Dollar-quoted text is a string constant here; a function body in one is
// bounded when analyze parses it in turn.
func nesting(sql []byte, limit int) int {
	var stack []nestFrame
	stack = append(stack, nestFrame{})
	s := scanner{src: sql}
	for s.pos < len(s.src) {
		top := &stack[len(stack)-1]
		c := s.src[s.pos]
		switch {
		case c == '-' && s.peek(1) == '-':
			for s.pos < len(s.src) && s.src[s.pos] != '\n' {
				s.pos++
			}
		case c == '/' && s.peek(1) == '*':
			s.skipBlockComment()
		case c == '\'':
			s.skipString(s.escapeString())
			top.seg++
		case c == '$':
			tag := s.dollarTag()
			if tag == nil {
				s.pos++ // a parameter ($1), counted by its digits
				continue
			}
			end := bytes.Index(s.src[s.pos+len(tag):], tag)
			if end < 0 {
				s.pos = len(s.src) // unterminated: the parser rejects it
				continue
			}
			s.pos += 2*len(tag) + end
			top.seg++
		case isWordByte(c) || c == '"':
			start := s.pos
			for s.pos < len(s.src) && (isWordByte(s.src[s.pos]) || s.src[s.pos] == '.' || s.src[s.pos] == '"') {
				if s.src[s.pos] == '"' {
					s.skipQuotedIdent()
				} else {
					s.pos++
				}
			}
			w := s.src[start:s.pos]
			switch {
			case keyword(w, "and") && top.between > 0:
				// BETWEEN's own AND: its last operand goes on the item.
				top.between--
			case keyword(w, "and") || keyword(w, "or") || keyword(w, "when") || keyword(w, "then") || keyword(w, "else"):
				top.endItem()
				continue
			case keyword(w, "between"):
				top.between++
			case keyword(w, "case"):
				top.seg++
				if len(stack) > limit {
					return limit + 1
				}
				stack = append(stack, nestFrame{isCase: true})
				continue
			case keyword(w, "end") && top.isCase && len(stack) > 1:
				v := top.value()
				stack = stack[:len(stack)-1]
				p := &stack[len(stack)-1]
				p.segChild = max(p.segChild, v)
				continue
			case keyword(w, "union") || keyword(w, "intersect") || keyword(w, "except") || keyword(w, "join"):
				// One level each on the chain; what they join are
				// operands side by side, like list items.
				top.chain++
				top.endItem()
				continue
			}
			top.seg++
		case c == '(' || c == '[':
			s.pos++
			top.seg++
			if len(stack) > limit {
				return limit + 1
			}
			stack = append(stack, nestFrame{})
		case c == ')' || c == ']':
			s.pos++
			if len(stack) == 1 {
				continue // unbalanced: the parser rejects it
			}
			v := top.value()
			if v > limit {
				return v
			}
			stack = stack[:len(stack)-1]
			p := &stack[len(stack)-1]
			p.segChild = max(p.segChild, v)
		case c == ',':
			s.pos++
			top.endItem()
		case c == ';':
			s.pos++
			top.endStatement()
		case isOperatorByte(c):
			// An operator ends where a comment starts, as in
			// PostgreSQL's lexer: "+--" is "+" and a comment.
			for s.pos < len(s.src) && isOperatorByte(s.src[s.pos]) && !s.commentStarts() {
				s.pos++
			}
			top.seg++
		default:
			s.pos++
		}
	}
	// Brackets left open (the parser rejects the text) close here.
	for len(stack) > 1 {
		v := stack[len(stack)-1].value()
		stack = stack[:len(stack)-1]
		p := &stack[len(stack)-1]
		p.segChild = max(p.segChild, v)
	}
	return stack[0].value()
}

// commentStarts reports whether a comment starts at pos.
func (s *scanner) commentStarts() bool {
	c := s.src[s.pos]
	return (c == '-' && s.peek(1) == '-') || (c == '/' && s.peek(1) == '*')
}

// keyword reports whether the word w is the unquoted keyword kw (lower
// case): a quoted "case" is an identifier.
func keyword(w []byte, kw string) bool {
	return len(w) == len(kw) && hasPrefixFold(w, kw)
}

// isOperatorByte reports whether c can be part of an operator in
// PostgreSQL's lexer (+ - * / < > = ~ ! @ # % ^ & | ` ?), or of a cast
// (::).
func isOperatorByte(c byte) bool {
	switch c {
	case '+', '-', '*', '/', '<', '>', '=', '~', '!', '@', '#', '%', '^', '&', '|', '`', '?', ':':
		return true
	}
	return false
}
