package scram

import (
	"unicode/utf8"

	"github.com/xdg-go/stringprep"
	"golang.org/x/text/unicode/norm"
)

// MaxPasswordLen is PostgreSQL's limit on a password it runs SASLprep
// over (MAX_PASSWORD_LENGTH): the server refuses to derive a verifier from
// a longer one and libpq fails to log in with it.
const MaxPasswordLen = 1024

// SASLprep returns the string whose bytes PostgreSQL derives SCRAM keys
// from for password: SASLprep (RFC 4013, the stringprep profile of RFC
// 3454) as pg_saslprep in src/common/saslprep.c does it, which both the
// server (CREATE ROLE … PASSWORD) and libpq run, with PostgreSQL's
// fallback: where SASLprep does not apply (the password is not valid
// UTF-8) or fails (a prohibited character, a bidirectional violation, or
// nothing left after mapping), the password's own bytes are used.
//
// The tables (RFC 3454 A.1, B.1, C.*, D.*) are github.com/xdg-go/stringprep's
// and the normalization is golang.org/x/text's NFKC; the steps are in
// PostgreSQL's order rather than stringprep.SASLprep.Prepare's, because
// the two differ where it matters for logging in:
//   - ASCII is returned as is, control characters included (PostgreSQL's
//     shortcut), where Prepare refuses controls;
//   - non-ASCII spaces (C.1.2) are mapped to a space before the
//     mapped-to-nothing table (B.1) is consulted, so U+200B, in both,
//     becomes a space, where Prepare removes it;
//   - prohibited and bidirectional characters are checked on the mapped
//     input before NFKC, where Prepare checks its output: "a\u0340"
//     (a combining tone mark NFKC turns into U+0300) and characters
//     unassigned in Unicode 3.2 that NFKC decomposes today (U+1F101) make
//     PostgreSQL fall back to the raw password, while Prepare would accept
//     their normalized form;
//   - a password that maps to nothing falls back rather than becoming "".
func SASLprep(password string) string {
	if isASCII(password) || !utf8.ValidString(password) {
		return password
	}
	mapped := make([]rune, 0, len(password))
	for _, r := range password {
		switch {
		case stringprep.TableC1_2.Contains(r):
			mapped = append(mapped, ' ')
		case mappedToNothing(r):
		default:
			mapped = append(mapped, r)
		}
	}
	if len(mapped) == 0 {
		return password
	}
	randAL := false
	for _, r := range mapped {
		if prohibited(r) {
			return password
		}
		randAL = randAL || stringprep.TableD1.Contains(r)
	}
	if randAL {
		// RFC 3454 section 6: a string with right-to-left characters has no
		// left-to-right ones and starts and ends with right-to-left ones.
		for _, r := range mapped {
			if stringprep.TableD2.Contains(r) {
				return password
			}
		}
		if !stringprep.TableD1.Contains(mapped[0]) || !stringprep.TableD1.Contains(mapped[len(mapped)-1]) {
			return password
		}
	}
	return norm.NFKC.String(string(mapped))
}

// prohibitedTables are what SASLprep prohibits in its output (RFC 4013
// section 2.3, PostgreSQL's prohibited_output_ranges) and the code points
// unassigned in Unicode 3.2 (A.1), which it prohibits in stored strings.
var prohibitedTables = []stringprep.Set{
	stringprep.TableA1,
	stringprep.TableC1_2,
	stringprep.TableC2_1,
	stringprep.TableC2_2,
	stringprep.TableC3,
	stringprep.TableC4,
	stringprep.TableC5,
	stringprep.TableC6,
	stringprep.TableC7,
	stringprep.TableC8,
	stringprep.TableC9,
}

func prohibited(r rune) bool {
	for _, t := range prohibitedTables {
		if t.Contains(r) {
			return true
		}
	}
	return false
}

// mappedToNothing reports whether r is in B.1, whose every entry maps to
// nothing.
func mappedToNothing(r rune) bool {
	_, ok := stringprep.TableB1.Map(r)
	return ok
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
