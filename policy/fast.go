package policy

import (
	"bytes"

	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/router"
)

// fastVerdict is what the lexical fast path concluded.
type fastVerdict uint8

const (
	// fastUnsure: the statement needs the parser.
	fastUnsure fastVerdict = iota
	// fastSafe: every statement is plain DML or transaction control naming
	// nothing the parser could refuse.
	fastSafe
	// fastRefused: a statement is a SET/RESET/DISCARD form that is refused
	// in every tier; its syntax leaves no other reading.
	fastRefused
)

// safeLeads are the first keywords of statements whose only dangerous
// parts are names (functions, relations), which riskyWord recognises.
// SELECT INTO is the one DDL they can spell, caught by the word "into".
var safeLeads = []string{
	"select", "insert", "update", "delete", "with", "values", "table", "merge",
	"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release",
	"show", "fetch", "move", "close", "execute", "deallocate",
}

// fast reads sql lexically, the way PostgreSQL's scanner splits it
// (comments, strings, quoted identifiers), without allocating. It is the
// one pre-filter of both checks: for fastRefused, reason is the policy's
// refusal; for fastSafe, the policy allows sql, transaction mode neither
// refuses nor pins it, and deallocates says whether a statement of it is
// DEALLOCATE; fastUnsure needs the parser for both.
//
// Why one pass can judge transaction mode too: of what transaction mode
// refuses or pins (txnmode.go), temporary objects, WITH HOLD cursors,
// LISTEN and SQL PREPARE need leading keywords outside safeLeads or a
// SELECT INTO; pg_temp schemas, set_config and the advisory lock functions
// are risky words; a SET or RESET statement is refused here or left to the
// parser. DEALLOCATE, the one form left, leads its statement.
// TestFastPathAgreesWithParser and FuzzPolicy hold this to the parser.
func fast(sql []byte) (v fastVerdict, reason string, deallocates bool) {
	// Unicode escapes (U&"\0070g_stat_activity") spell names that no word
	// of the text shows; dollar quotes hold bodies. Both go to the parser.
	if bytes.Contains(sql, []byte(`&"`)) || bytes.Contains(sql, []byte(`&'`)) {
		return fastUnsure, "", false
	}
	sc := scanner{src: sql}
	var lead, prev []byte
	setting := false // the statement is SET, RESET or DISCARD
	// intos is how many more INTOs the statement may have: INSERT and
	// MERGE name their target after one. Any other INTO is SELECT INTO,
	// which creates a table, maybe a temporary one (the server refuses it
	// inside INSERT and MERGE, but the verdicts are the parser's to give).
	intos := 0
	n := 0 // words in the current statement
	for {
		w, boundary, ok := sc.next()
		if (!ok || boundary) && setting && n > 0 {
			// A SET, RESET or DISCARD the words so far did not decide
			// ends here: RESET SESSION resets a setting named "session",
			// which transaction mode refuses; the rest are syntax errors.
			return fastUnsure, "", false
		}
		if !ok {
			if sc.broken() {
				return fastUnsure, "", false
			}
			return fastSafe, "", deallocates
		}
		if sc.dollar {
			return fastUnsure, "", false
		}
		if boundary {
			lead, prev, n, setting = nil, nil, 0, false
		}
		if w == nil {
			continue
		}
		n++
		switch {
		case n == 1:
			lead = w
			setting = eq(w, "set") || eq(w, "reset") || eq(w, "discard")
			if !setting && !oneOf(w, safeLeads) {
				return fastUnsure, "", false
			}
			intos = 0
			if eq(w, "insert") || eq(w, "merge") {
				intos = 1
			}
			if eq(w, "deallocate") {
				deallocates = true
			}
		case setting:
			if reason := fastSetting(lead, prev, w, n); reason != "" {
				return fastRefused, reason, false
			}
			if n >= 3 || !(eq(w, "session") || eq(w, "local")) {
				// Any other setting: the parser knows which are tier rules.
				return fastUnsure, "", false
			}
		case eq(w, "into"):
			if intos == 0 {
				return fastUnsure, "", false
			}
			intos--
		case riskyWord(w) || eq(w, "prepared"):
			// COMMIT/ROLLBACK PREPARED are two-phase commit.
			return fastUnsure, "", false
		}
		prev = w
	}
}

// fastSetting returns the refusal for word w, the n-th word of a
// SET/RESET/DISCARD statement, when the words so far already decide it.
func fastSetting(lead, prev, w []byte, n int) string {
	afterVerb := n == 2 || (n == 3 && (eq(prev, "session") || eq(prev, "local")))
	switch {
	case eq(lead, "discard"):
		if n == 2 && eq(w, "all") {
			return reasonDiscardAll
		}
	case n == 3 && eq(prev, "session") && eq(w, "authorization"):
		return reasonSessAuth
	case !afterVerb:
	case eq(w, "role"):
		return reasonRole
	case eq(w, "session_authorization"):
		return reasonSessAuth
	case eq(w, migrations.TenantGUC):
		return reasonTenantGUC
	case hasPrefix(w, router.TenantSettingPrefix):
		return reasonPlan
	case eq(lead, "reset") && n == 2 && eq(w, "all"):
		return reasonResetAll
	}
	return ""
}

// riskyWord reports whether a word (possibly dotted and quoted) has a part
// that could name a function or relation the parser refuses: every
// built-in in those lists starts with pg_ or lo_, or is one of a few
// others.
func riskyWord(w []byte) bool {
	for len(w) > 0 {
		part := w
		if i := bytes.IndexByte(w, '.'); i >= 0 {
			part, w = w[:i], w[i+1:]
		} else {
			w = nil
		}
		if len(part) > 0 && part[0] == '"' {
			part = part[1:]
		}
		if len(part) < 3 {
			continue
		}
		switch lower(part[0]) {
		case 'p':
			if hasPrefixFold(part, "pg_") {
				return true
			}
		case 'l':
			if hasPrefixFold(part, "lo_") || eq(part, "loread") || eq(part, "lowrite") {
				return true
			}
		case 'd':
			if hasPrefixFold(part, "dblink") {
				return true
			}
		case 's':
			if eq(part, "set_config") {
				return true
			}
		case 't':
			if hasPrefixFold(part, "ts_") {
				return true
			}
		}
		if len(part) >= 7 && bytes.IndexByte(part, '_') >= 0 && containsFold(part, "_to_xml") {
			return true
		}
	}
	return false
}

func oneOf(w []byte, list []string) bool {
	for _, s := range list {
		if eq(w, s) {
			return true
		}
	}
	return false
}

func hasPrefixFold(w []byte, prefix string) bool {
	if len(w) < len(prefix) {
		return false
	}
	for i := range len(prefix) {
		if lower(w[i]) != prefix[i] {
			return false
		}
	}
	return true
}

func containsFold(w []byte, s string) bool {
	for i := 0; i+len(s) <= len(w); i++ {
		if hasPrefixFold(w[i:], s) {
			return true
		}
	}
	return false
}

// eq compares a word with an ASCII name case-insensitively, ignoring the
// double quotes of quoted identifiers in the word.
// hasPrefix is eq of w's beginning: whether w, quotes skipped, starts
// with prefix, ignoring case.
func hasPrefix(w []byte, prefix string) bool {
	j := 0
	for _, c := range w {
		if j == len(prefix) {
			return true
		}
		if c == '"' {
			continue
		}
		if lower(c) != lower(prefix[j]) {
			return false
		}
		j++
	}
	return j == len(prefix)
}

func eq(w []byte, s string) bool {
	j := 0
	for _, c := range w {
		if c == '"' {
			continue
		}
		if j == len(s) || lower(c) != lower(s[j]) {
			return false
		}
		j++
	}
	return j == len(s)
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// scanner yields the words of SQL text. A word is a run of identifier
// characters, dots and quoted identifiers, so "app"."tenant_id" is one
// word that eq reads as app.tenant_id.
type scanner struct {
	src []byte
	pos int
	// tag is the open dollar quote's delimiter ("$fn$"), nil outside one.
	tag []byte
	// open is set when the text ends inside a string, quoted identifier or
	// comment.
	open bool
	// dollar is set once a dollar quote has been seen.
	dollar bool
}

// broken reports whether the text ended inside a quote or comment, where
// the server would see an error and the scanner may have misread.
func (s *scanner) broken() bool { return s.open || s.tag != nil }

// next returns the next word (nil for a statement boundary without a
// word), whether a statement boundary (';', or a dollar quote's edge)
// precedes it, and false at the end of input.
func (s *scanner) next() (word []byte, boundary, ok bool) {
	for s.pos < len(s.src) {
		c := s.src[s.pos]
		switch {
		case s.tag == nil && c == '-' && s.peek(1) == '-':
			for s.pos < len(s.src) && s.src[s.pos] != '\n' {
				s.pos++
			}
		case s.tag == nil && c == '/' && s.peek(1) == '*':
			s.skipBlockComment()
		case s.tag == nil && c == '\'':
			s.skipString(s.escapeString())
		case c == '$':
			if tag := s.dollarTag(); tag != nil {
				s.dollar = true
				s.pos += len(tag)
				if s.tag == nil {
					s.tag = tag
				} else if bytes.Equal(tag, s.tag) {
					s.tag = nil
				}
				return nil, true, true
			}
			s.pos++
		case c == ';':
			s.pos++
			return nil, true, true
		case isWordByte(c) || c == '"':
			start := s.pos
			for s.pos < len(s.src) {
				switch c := s.src[s.pos]; {
				case c == '"':
					s.skipQuotedIdent()
				case isWordByte(c) || c == '.':
					s.pos++
				default:
					return s.src[start:s.pos], false, true
				}
			}
			return s.src[start:s.pos], false, true
		default:
			s.pos++
		}
	}
	return nil, false, false
}

// escapeString reports whether the quote at pos opens an E'...' string:
// the E must be a token of its own. In time'12:00' the quote follows an
// identifier that happens to end in e, and a backslash in it is just a
// character; reading it as an escape would let '\' ; SET ROLE x; --'
// look like one string to the scanner and like two statements to the
// server.
func (s *scanner) escapeString() bool {
	if s.pos == 0 || lower(s.src[s.pos-1]) != 'e' {
		return false
	}
	return s.pos == 1 || !(isWordByte(s.src[s.pos-2]) || s.src[s.pos-2] == '"' || s.src[s.pos-2] == '$')
}

func (s *scanner) peek(n int) byte {
	if s.pos+n < len(s.src) {
		return s.src[s.pos+n]
	}
	return 0
}

func (s *scanner) skipBlockComment() {
	depth := 0
	for s.pos < len(s.src) {
		switch {
		case s.src[s.pos] == '/' && s.peek(1) == '*':
			depth++
			s.pos += 2
		case s.src[s.pos] == '*' && s.peek(1) == '/':
			depth--
			s.pos += 2
			if depth == 0 {
				return
			}
		default:
			s.pos++
		}
	}
	s.open = true
}

func (s *scanner) skipString(escapes bool) {
	s.pos++
	for s.pos < len(s.src) {
		c := s.src[s.pos]
		s.pos++
		switch {
		case escapes && c == '\\':
			s.pos++
		case c == '\'':
			if s.pos < len(s.src) && s.src[s.pos] == '\'' {
				s.pos++
				continue
			}
			return
		}
	}
	s.open = true
}

// dollarTag returns the dollar-quote delimiter at pos ("$$", "$body$"), or
// nil when '$' starts something else (a parameter like $1).
func (s *scanner) dollarTag() []byte {
	if s.pos > 0 && isWordByte(s.src[s.pos-1]) {
		return nil
	}
	for i := s.pos + 1; i < len(s.src); i++ {
		c := s.src[i]
		if c == '$' {
			return s.src[s.pos : i+1]
		}
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80 || i > s.pos+1 && c >= '0' && c <= '9') {
			return nil
		}
	}
	return nil
}

func isWordByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}

// skipQuotedIdent moves past a "quoted identifier", whose content may
// hold any character, including quotes of other kinds and semicolons.
func (s *scanner) skipQuotedIdent() {
	s.pos++
	for s.pos < len(s.src) {
		c := s.src[s.pos]
		s.pos++
		if c == '"' {
			if s.pos < len(s.src) && s.src[s.pos] == '"' {
				s.pos++
				continue
			}
			return
		}
	}
	s.open = true
}
