package router

import "bytes"

// Policy refuses client SQL that would change or escape the tenant
// context of a session: SET/RESET ROLE, SESSION AUTHORIZATION, the tenant
// setting, RESET ALL, DISCARD ALL, set_config() and query_to_xml() (which
// runs SQL given as a string). It is lexical, so it
// reads SQL the way PostgreSQL's scanner splits it (comments, quoted
// strings, quoted identifiers, dollar quotes) without parsing it. Function
// and DO bodies (dollar-quoted) are scanned too, including the strings in
// them, because that is where EXECUTE 'SET ROLE …' would hide. Top-level
// string literals are data and are skipped.
//
// A lexical check cannot see SQL assembled at run time (EXECUTE of a
// concatenation); the database-side isolation of DESIGN.md is what stops
// that. The policy is the proxy's layer of defence in depth.
type Policy struct {
	guc string
}

// NewPolicy returns the policy for the given tenant setting name.
func NewPolicy(tenantGUC string) *Policy {
	return &Policy{guc: tenantGUC}
}

// Check returns the reason sql is refused, or "" when it may run. It does
// not allocate and does not retain sql.
func (p *Policy) Check(sql []byte) string {
	var sc scanner
	sc.src = sql
	var prev, prev2 []byte
	sawUpdate := false
	for {
		w, boundary, ok := sc.next()
		if !ok {
			return ""
		}
		if boundary {
			prev, prev2, sawUpdate = nil, nil, false
		}
		if w == nil {
			continue
		}
		switch {
		case eq(w[bytes.LastIndexByte(w, '.')+1:], "set_config"):
			return "set_config() is not allowed through the proxy"
		case hasPrefixFold(w[bytes.LastIndexByte(w, '.')+1:], "query_to_xml"):
			// query_to_xml() runs a query given as a string, which would
			// hide it from this scanner.
			return "query_to_xml() is not allowed through the proxy"
		case eq(w, "update"):
			// UPDATE … SET col = … assigns columns, not settings.
			sawUpdate = true
		case eq(prev, "session") && eq(w, "authorization"):
			return "changing the session authorization is not allowed"
		case (eq(prev, "reset") || eq(prev, "discard")) && eq(w, "all"):
			return "RESET ALL and DISCARD ALL are not allowed"
		}
		verb := prev
		if eq(prev, "session") || eq(prev, "local") {
			verb = prev2
		}
		// standard_conforming_strings is guarded because turning it off
		// changes where string literals end, which this scanner relies on.
		if (eq(verb, "reset") || (eq(verb, "set") && !sawUpdate)) &&
			(eq(w, "role") || eq(w, "session_authorization") || eq(w, p.guc) || eq(w, "standard_conforming_strings")) {
			return "changing the role or the tenant setting is not allowed"
		}
		prev2, prev = prev, w
	}
}

// eq compares a word with an ASCII name case-insensitively, ignoring the
// double quotes of quoted identifiers in the word.
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

// hasPrefixFold reports whether the word starts with an ASCII prefix,
// case-insensitively and ignoring double quotes.
func hasPrefixFold(w []byte, prefix string) bool {
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
}

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
			s.skipString(s.pos > 0 && (s.src[s.pos-1] == 'e' || s.src[s.pos-1] == 'E'))
		case c == '$':
			if tag := s.dollarTag(); tag != nil {
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
}
