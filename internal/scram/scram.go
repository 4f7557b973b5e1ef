package scram

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	xscram "github.com/xdg-go/scram"
)

// DefaultIterations matches PostgreSQL's scram_iterations default.
const DefaultIterations = 4096

const saltLen = 16

// Verifier is a parsed "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>".
type Verifier struct {
	Iterations int
	Salt       []byte
	StoredKey  []byte
	ServerKey  []byte
}

// NewVerifier derives a verifier for password with a fresh random salt,
// as PostgreSQL's CREATE ROLE … PASSWORD does: a password longer than
// MaxPasswordLen bytes or holding a NUL byte is refused, as PostgreSQL
// refuses it (and libpq could not log in with it).
func NewVerifier(password string) (string, error) {
	if len(password) > MaxPasswordLen {
		return "", fmt.Errorf("scram: password too long (%d bytes; at most %d)", len(password), MaxPasswordLen)
	}
	if strings.IndexByte(password, 0) >= 0 {
		return "", errors.New("scram: password contains a NUL byte")
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("scram: salt: %w", err)
	}
	v, err := Derive(password, salt, DefaultIterations)
	if err != nil {
		return "", err
	}
	return v.String(), nil
}

// Derive computes the verifier of password for a given salt and iteration
// count: the keys of RFC 5802 over SASLprep(password), PostgreSQL's
// preparation, so that a verifier derived here and one PostgreSQL derives
// from the same password and salt are the same, and a client that prepares
// the password as libpq does proves knowledge of it. The keys are computed
// by github.com/xdg-go/scram.
func Derive(password string, salt []byte, iterations int) (Verifier, error) {
	if iterations <= 0 {
		return Verifier{}, errors.New("scram: iterations must be positive")
	}
	client, err := xscram.SHA256.NewClientUnprepped("", SASLprep(password), "")
	if err != nil {
		return Verifier{}, fmt.Errorf("scram: %w", err)
	}
	creds, err := client.GetStoredCredentialsWithError(xscram.KeyFactors{Salt: string(salt), Iters: iterations})
	if err != nil {
		return Verifier{}, fmt.Errorf("scram: %w", err)
	}
	return Verifier{
		Iterations: iterations,
		Salt:       salt,
		StoredKey:  creds.StoredKey,
		ServerKey:  creds.ServerKey,
	}, nil
}

// Credentials returns v in the form github.com/xdg-go/scram's server side
// of the exchange looks credentials up in.
func (v Verifier) Credentials() xscram.StoredCredentials {
	return xscram.StoredCredentials{
		KeyFactors: xscram.KeyFactors{Salt: string(v.Salt), Iters: v.Iterations},
		StoredKey:  v.StoredKey,
		ServerKey:  v.ServerKey,
	}
}

// HMAC is HMAC-SHA-256(key, msg).
func HMAC(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// String renders v in PostgreSQL's rolpassword format.
func (v Verifier) String() string {
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", v.Iterations, enc(v.Salt), enc(v.StoredKey), enc(v.ServerKey))
}

// ParseVerifier parses PostgreSQL's rolpassword format.
func ParseVerifier(s string) (Verifier, error) {
	rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !ok {
		return Verifier{}, errors.New("scram: not a SCRAM-SHA-256 verifier")
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return Verifier{}, errors.New("scram: verifier lacks keys")
	}
	iterStr, saltStr, ok1 := strings.Cut(params, ":")
	storedStr, serverStr, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return Verifier{}, errors.New("scram: malformed verifier")
	}
	iter, err := strconv.Atoi(iterStr)
	if err != nil || iter <= 0 {
		return Verifier{}, errors.New("scram: bad iteration count")
	}
	dec := base64.StdEncoding.DecodeString
	salt, err1 := dec(saltStr)
	stored, err2 := dec(storedStr)
	server, err3 := dec(serverStr)
	if err := errors.Join(err1, err2, err3); err != nil {
		return Verifier{}, fmt.Errorf("scram: malformed verifier: %w", err)
	}
	if len(stored) != sha256.Size || len(server) != sha256.Size {
		return Verifier{}, errors.New("scram: keys have the wrong length")
	}
	return Verifier{Iterations: iter, Salt: salt, StoredKey: stored, ServerKey: server}, nil
}
