package catalog

import (
	"crypto/rand"
	"fmt"
	"regexp"
	"strings"
)

// subdomainPattern is docs/design.md's rule for a tenant id / subdomain: a
// DNS label in lowercase.
var subdomainPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// reserved subdomains name the platform's own hosts or PostgreSQL's own
// objects; a tenant called "postgres" or "template1" would confuse operators
// reading logs and tenant lists beside PostgreSQL's own databases. "other"
// is the metrics' label for the tenants past the labelled busiest ones.
var reserved = map[string]bool{
	"www": true, "api": true, "admin": true, "app": true,
	"postgres": true, "template0": true, "template1": true, "public": true,
	"default": true, "root": true, "tenantproxy": true, "localhost": true,
	"mail": true, "status": true, "static": true, "docs": true, "support": true,
	"other": true,
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

// namePrefix starts every tenant's schema, role and database name: it keeps
// the name a valid unquoted identifier (a letter first) and tells an
// operator reading pg_roles or pg_database which objects are tenants'.
const namePrefix = "tenant_"

// NewObjectName returns a fresh schema, role and database name for a tenant:
// namePrefix and 16 random base32 characters (80 bits, lowercase), 23 bytes,
// a valid unquoted PostgreSQL identifier. It says nothing about the tenant:
// every tenant of a backend can list schemas, roles and databases
// (pg_namespace, pg_roles, casts to regrole, pg_describe_object …), so a
// name derived from the subdomain would tell each tenant who the others
// are. Create stores the name in the tenant row, where operators map it
// back (tenant show), and draws again should the catalog's unique indexes
// report it taken. Tenants created before these names keep the
// "tenant_<subdomain>" their row records.
func NewObjectName() string {
	return namePrefix + strings.ToLower(rand.Text()[:16])
}

func (c *Catalog) newName() string {
	if c.nameSource != nil {
		return c.nameSource()
	}
	return NewObjectName()
}
