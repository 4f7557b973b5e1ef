package scram

import (
	"bytes"
	"strings"
	"testing"
)

func TestVerifierRoundTrip(t *testing.T) {
	s, err := NewVerifier("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	v, err := ParseVerifier(s)
	if err != nil {
		t.Fatalf("ParseVerifier(%q): %v", s, err)
	}
	again, err := Derive("s3cret", v.Salt, v.Iterations)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.StoredKey, v.StoredKey) || !bytes.Equal(again.ServerKey, v.ServerKey) {
		t.Fatal("re-derived keys differ from the parsed verifier")
	}
	other, _ := Derive("wrong", v.Salt, v.Iterations)
	if bytes.Equal(other.StoredKey, v.StoredKey) {
		t.Fatal("a different password gave the same stored key")
	}
}

func TestParseVerifierRejectsMalformed(t *testing.T) {
	for _, s := range []string{
		"",
		"md5abcdef",
		"SCRAM-SHA-256$",
		"SCRAM-SHA-256$4096:c2FsdA==",
		"SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
		"SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
		"SCRAM-SHA-256$4096:!!$AAAA:AAAA",
		"SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
	} {
		if _, err := ParseVerifier(s); err == nil {
			t.Errorf("ParseVerifier(%q) succeeded, want an error", s)
		}
	}
}

// TestSASLprep checks the preparation against PostgreSQL's pg_saslprep,
// case by case; test/TestSCRAMPasswordsAgreeWithPostgres checks the same
// passwords against a real server's own verifiers.
func TestSASLprep(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"ASCII as is", "pencil", "pencil"},
		{"ASCII controls as is (PostgreSQL's shortcut)", "pen\x01cil\x7f", "pen\x01cil\x7f"},
		{"ligature to its NFKC letters", "\ufb01sh", "fish"},
		{"non-breaking space to a space", "pass\u00a0word", "pass word"},
		{"other non-ASCII spaces to a space", "a\u2000b\u3000c", "a b c"},
		{"zero-width space, also in B.1, to a space", "\u200bcaf\u00e9", " caf\u00e9"},
		{"soft hyphen to nothing (RFC 4013 example)", "I\u00adX", "IX"},
		{"feminine ordinal to a (RFC 4013 example)", "\u00aa", "a"},
		{"roman numeral nine to IX (RFC 4013 example)", "\u2168", "IX"},
		{"full-width letters to ASCII", "\uff50\uff41\uff53\uff53", "pass"},
		{"decomposed to composed", "A\u030a", "\u00c5"},
		{"ohm sign to omega", "\u2126", "\u03a9"},
		{"right-to-left string", "\u0627\u0031\u0628", "\u0627\u0031\u0628"},
		{"invalid UTF-8: raw", "\xff\xfepass", "\xff\xfepass"},
		{"only mapped-to-nothing characters: raw", "\u00ad\u00ad", "\u00ad\u00ad"},
		{"control character beside non-ASCII: raw", "\u0007caf\u00e9", "\u0007caf\u00e9"},
		{"unassigned in Unicode 3.2 (emoji): raw", "pass\U0001f511", "pass\U0001f511"},
		{"unassigned in Unicode 3.2 that NFKC decomposes: raw", "\U0001f101caf\u00e9", "\U0001f101caf\u00e9"},
		{"prohibited before NFKC though not after: raw", "a\u0340caf\u00e9", "a\u0340caf\u00e9"},
		{"private use: raw", "\ue000caf\u00e9", "\ue000caf\u00e9"},
		{"right-to-left not ending right-to-left: raw (RFC 4013 example)", "\u0627\u0031", "\u0627\u0031"},
		{"right-to-left mixed with left-to-right: raw", "\u0627a\u0628", "\u0627a\u0628"},
	}
	for _, tt := range tests {
		if got := SASLprep(tt.in); got != tt.want {
			t.Errorf("%s: SASLprep(%+q) = %+q; want %+q", tt.name, tt.in, got, tt.want)
		}
	}
}

func TestDeriveUsesSASLprep(t *testing.T) {
	salt := []byte("0123456789abcdef")
	a, err := Derive("\ufb01sh\u00ad", salt, DefaultIterations)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Derive("fish", salt, DefaultIterations)
	if !bytes.Equal(a.StoredKey, b.StoredKey) || !bytes.Equal(a.ServerKey, b.ServerKey) {
		t.Fatal("a password and its SASLprep form derive different keys")
	}
	raw, _ := Derive("\xfffish", salt, DefaultIterations)
	if bytes.Equal(raw.StoredKey, b.StoredKey) {
		t.Fatal("invalid UTF-8 derived the keys of its valid remainder")
	}
}

func TestNewVerifierRefusesWhatPostgresRefuses(t *testing.T) {
	if _, err := NewVerifier(strings.Repeat("x", MaxPasswordLen)); err != nil {
		t.Fatalf("password of %d bytes: %v", MaxPasswordLen, err)
	}
	for _, p := range []string{strings.Repeat("x", MaxPasswordLen+1), "nul\x00byte"} {
		if _, err := NewVerifier(p); err == nil {
			t.Errorf("NewVerifier(%.20q…) succeeded; want an error", p)
		}
	}
}
