package scram

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
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

// NewVerifier derives a verifier for password with a fresh random salt.
func NewVerifier(password string) (string, error) {
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
// count. Clients use the same derivation to prove they know the password.
func Derive(password string, salt []byte, iterations int) (Verifier, error) {
	salted, err := SaltedPassword(password, salt, iterations)
	if err != nil {
		return Verifier{}, err
	}
	stored := sha256.Sum256(HMAC(salted, "Client Key"))
	return Verifier{
		Iterations: iterations,
		Salt:       salt,
		StoredKey:  stored[:],
		ServerKey:  HMAC(salted, "Server Key"),
	}, nil
}

// SaltedPassword is Hi(password, salt, i) of RFC 5802.
func SaltedPassword(password string, salt []byte, iterations int) ([]byte, error) {
	if iterations <= 0 {
		return nil, errors.New("scram: iterations must be positive")
	}
	return pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
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
