package catalog

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// subdomainPattern is docs/design.md's rule for a tenant id / subdomain: a
// DNS label in lowercase.
var subdomainPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// reserved subdomains name the platform's own hosts or PostgreSQL's own
// objects; a tenant called "postgres" or "template1" would confuse operators
// reading pg_database even though every identifier is quoted.
var reserved = map[string]bool{
	"www": true, "api": true, "admin": true, "app": true,
	"postgres": true, "template0": true, "template1": true, "public": true,
	"default": true, "root": true, "tenantproxy": true, "localhost": true,
	"mail": true, "status": true, "static": true, "docs": true, "support": true,
}

// ValidateSubdomain reports why s cannot be a tenant subdomain, or nil. It
// does not check uniqueness; Create does.
func ValidateSubdomain(s string) error {
	bad := func(reason string, args ...any) error {
		return &ValidationError{Field: "subdomain", Value: s, Reason: fmt.Sprintf(reason, args...)}
	}
	switch {
	case s == "":
		return bad("must not be empty")
	case len(s) > 63:
		return bad("is %d characters long; at most 63 are allowed", len(s))
	case strings.ToLower(s) != s:
		return bad("must be lowercase")
	case strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789-") != "":
		return bad("may contain only a-z, 0-9 and hyphens")
	case !subdomainPattern.MatchString(s):
		return bad("must not start or end with a hyphen")
	case reserved[s]:
		return bad("is reserved")
	}
	return nil
}

// usernamePattern keeps tenant login names free of the "<user>.<tenant>"
// separator and of anything a client library would have to escape.
var usernamePattern = regexp.MustCompile(`^[a-z0-9_][a-z0-9_-]{0,62}$`)

func validateUsername(s string) error {
	if !usernamePattern.MatchString(s) {
		return &ValidationError{Field: "user name", Value: s,
			Reason: "must be 1 to 63 characters of a-z, 0-9, '_' and '-', not starting with '-'"}
	}
	return nil
}

const (
	namePrefix = "tenant_"
	// maxIdentifier is PostgreSQL's NAMEDATALEN-1: longer names are
	// truncated by the server, silently, which could make two tenants share
	// a role.
	maxIdentifier = 63
	hashLen       = 8
)

// DerivedName is the schema, role and database name of tenant id:
// "tenant_<id>" when that fits in 63 bytes, else a prefix of id, '_' and 8
// hex digits of its SHA-256. It is deterministic; Create stores it, and the
// catalog's unique indexes refuse the (unlikely) collision of two hashed
// names instead of letting two tenants share one. A hashed name cannot equal
// an unhashed one: ids contain no '_'.
func DerivedName(id string) string {
	if len(namePrefix)+len(id) <= maxIdentifier {
		return namePrefix + id
	}
	sum := sha256.Sum256([]byte(id))
	keep := maxIdentifier - len(namePrefix) - 1 - hashLen
	return namePrefix + id[:keep] + "_" + hex.EncodeToString(sum[:])[:hashLen]
}
