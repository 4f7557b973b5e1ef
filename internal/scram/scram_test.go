package scram

import (
	"bytes"
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
