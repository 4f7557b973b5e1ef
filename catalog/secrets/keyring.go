package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// prefix starts every sealed value; version 1 is AES-256-GCM.
const (
	prefix   = "enc:"
	envelope = "enc:v1:"
)

// KeySize is the length of a key in bytes (AES-256).
const KeySize = 32

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Keyring is the set of keys the catalog's secrets are sealed with. The
// first key added is current: Seal uses it. Every key opens. A Keyring is
// immutable once built and safe for concurrent use.
type Keyring struct {
	current string
	keys    map[string]cipher.AEAD
}

// ErrNoKey is wrapped by Open's error when a value is sealed but no key, or
// not the key it names, is configured.
var ErrNoKey = errors.New("key not configured")

// ErrWrongKey is wrapped by Open's error when the named key does not open
// the value: another key of the same id, or a damaged value.
var ErrWrongKey = errors.New("wrong key or damaged value")

// Parse reads keys from text: one key a line, either "<id>=<base64 key>" or
// a bare base64 key whose id is its fingerprint (Fingerprint). Blank lines
// and lines starting with # are ignored. The keys are appended to k (nil
// starts a new Keyring); the first key of the first call is current. source
// names the text in errors (a file name, an environment variable); no error
// contains key material.
func (k *Keyring) Parse(source, text string) (*Keyring, error) {
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// A bare key ends in '=' padding too, so "id=" is only an id when
		// what follows it is a key.
		id, raw := "", decodeKey(line)
		if named, b64, ok := strings.Cut(line, "="); ok && keyIDPattern.MatchString(named) {
			if r := decodeKey(b64); r != nil {
				id, raw = named, r
			}
		}
		if raw == nil {
			return nil, fmt.Errorf("secrets: %s line %d: want [id=]<base64 of %d random bytes> (e.g. openssl rand -base64 32)", source, i+1, KeySize)
		}
		if id == "" {
			id = Fingerprint(raw)
		}
		var err2 error
		if k, err2 = k.add(id, raw); err2 != nil {
			return nil, fmt.Errorf("secrets: %s line %d: %w", source, i+1, err2)
		}
	}
	if k == nil {
		return nil, fmt.Errorf("secrets: %s holds no key", source)
	}
	return k, nil
}

// decodeKey returns the key b64 encodes, or nil when it is not one.
func decodeKey(b64 string) []byte {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != KeySize {
		return nil
	}
	return raw
}

// ParseFile is Parse of the file at path.
func (k *Keyring) ParseFile(path string) (*Keyring, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets: key file: %w", err)
	}
	return k.Parse(path, string(raw))
}

// New returns a Keyring whose only (current) key is key under id.
func New(id string, key []byte) (*Keyring, error) {
	if !keyIDPattern.MatchString(id) {
		return nil, fmt.Errorf("secrets: key id %q: want 1-64 of A-Z a-z 0-9 _ . -", id)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("secrets: key %q: want %d bytes, got %d", id, KeySize, len(key))
	}
	return (*Keyring)(nil).add(id, key)
}

// Generate returns a new random key, base64 encoded, as a key file line.
func Generate() string {
	key := make([]byte, KeySize)
	rand.Read(key) // never fails (crypto/rand documents it)
	return base64.StdEncoding.EncodeToString(key)
}

// Fingerprint is the id of a key given without one: the first 8 bytes of
// its SHA-256, in hex. It identifies the key without revealing it.
func Fingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:8])
}

// add returns a copy of k with key under id; the first key is current.
func (k *Keyring) add(id string, key []byte) (*Keyring, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	next := &Keyring{keys: map[string]cipher.AEAD{}}
	if k != nil {
		next.current = k.current
		for kid, a := range k.keys {
			next.keys[kid] = a
		}
	}
	if _, dup := next.keys[id]; dup {
		return nil, fmt.Errorf("key id %q given twice", id)
	}
	next.keys[id] = aead
	if next.current == "" {
		next.current = id
	}
	return next, nil
}

// Current is the id of the key Seal uses; empty for a nil Keyring.
func (k *Keyring) Current() string {
	if k == nil {
		return ""
	}
	return k.current
}

// Sealed reports whether stored is a sealed value (of any version).
func Sealed(stored string) bool { return strings.HasPrefix(stored, prefix) }

// SealedWith returns the key id stored was sealed with; ok is false for
// plain text.
func SealedWith(stored string) (id string, ok bool) {
	rest, ok := strings.CutPrefix(stored, envelope)
	if !ok {
		return "", false
	}
	id, _, ok = strings.Cut(rest, ":")
	return id, ok
}

// Seal encrypts plain with the current key. A nil Keyring returns plain
// unchanged: encryption is off.
func (k *Keyring) Seal(plain string) string {
	if k == nil {
		return plain
	}
	aead := k.keys[k.current]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	rand.Read(nonce) // never fails (crypto/rand documents it)
	sealed := aead.Seal(nonce, nonce, []byte(plain), []byte(k.current))
	return envelope + k.current + ":" + base64.StdEncoding.EncodeToString(sealed)
}

// Open returns the plain text of stored: stored itself when it is plain
// text (written before encryption), else the decryption with the key the
// envelope names. Errors wrap ErrNoKey or ErrWrongKey, name the key id and
// never contain the value.
func (k *Keyring) Open(stored string) (string, error) {
	if !Sealed(stored) {
		return stored, nil
	}
	id, ok := SealedWith(stored)
	if !ok {
		return "", errors.New("unknown envelope version (written by a newer tenantproxy?)")
	}
	if k == nil {
		return "", fmt.Errorf("sealed with key %q but no secrets key is configured (--secrets-key-file or TENANTPROXY_SECRETS_KEY): %w", id, ErrNoKey)
	}
	aead, ok := k.keys[id]
	if !ok {
		return "", fmt.Errorf("sealed with key %q, which is not among the configured keys: %w", id, ErrNoKey)
	}
	raw, err := base64.StdEncoding.DecodeString(stored[len(envelope)+len(id)+1:])
	if err != nil || len(raw) < aead.NonceSize() {
		return "", fmt.Errorf("key %q: %w", id, ErrWrongKey)
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte(id))
	if err != nil {
		return "", fmt.Errorf("key %q: %w", id, ErrWrongKey)
	}
	return string(plain), nil
}

// OpenBackend is Open of stored, the secret what (e.g. "admin DSN") of
// backend, with an error that names both and never the value. Every reader
// of the backends table's secrets — package catalog and package
// migrations — goes through it.
func (k *Keyring) OpenBackend(backend, what, stored string) (string, error) {
	plain, err := k.Open(stored)
	if err != nil {
		return "", fmt.Errorf("backend %s: %s: %w", backend, what, err)
	}
	return plain, nil
}
