package catalog_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func TestValidateSubdomain(t *testing.T) {
	tests := []struct {
		in     string
		reason string // "" means valid
	}{
		{"acme", ""},
		{"a", ""},
		{"0", ""},
		{"acme-corp-2", ""},
		{strings.Repeat("a", 63), ""},
		{"", "must not be empty"},
		{"Acme", "must be lowercase"},
		{"ACME", "must be lowercase"},
		{"-acme", "must not start or end with a hyphen"},
		{"acme-", "must not start or end with a hyphen"},
		{strings.Repeat("a", 64), "64 characters long"},
		{"admin", "is reserved"},
		{"www", "is reserved"},
		{"api", "is reserved"},
		{"app", "is reserved"},
		{"postgres", "is reserved"},
		{"template1", "is reserved"},
		{"acme;drop", "may contain only"},
		{"x'); drop table tenants; --", "may contain only"},
		{"x'); DROP TABLE tenants; --", "must be lowercase"},
		{`a"b`, "may contain only"},
		{"a b", "may contain only"},
		{"a_b", "may contain only"},
		{"a.b", "may contain only"},
		{"ácme", "may contain only"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			err := catalog.ValidateSubdomain(tt.in)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("ValidateSubdomain(%q) = %v; want nil", tt.in, err)
				}
				return
			}
			var ve *catalog.ValidationError
			if !errors.As(err, &ve) || ve.Field != "subdomain" || !strings.Contains(ve.Reason, tt.reason) {
				t.Fatalf("ValidateSubdomain(%q) = %v; want a subdomain ValidationError saying %q", tt.in, err, tt.reason)
			}
		})
	}
}

func TestNewObjectNameIsOpaqueAndFresh(t *testing.T) {
	// A valid unquoted identifier needs no quoting in psql or logs; a name
	// that depended on anything but chance could be guessed from a subdomain.
	identifier := regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
	seen := map[string]bool{}
	for range 1000 {
		n := catalog.NewObjectName()
		if !identifier.MatchString(n) || !strings.HasPrefix(n, "tenant_") {
			t.Fatalf("NewObjectName() = %q; want a lowercase unquoted identifier of at most 63 bytes starting tenant_", n)
		}
		if seen[n] {
			t.Fatalf("NewObjectName() drew %q twice in 1000 draws", n)
		}
		seen[n] = true
	}
}

func TestCreateRequestValidation(t *testing.T) {
	// These fail before the catalog is consulted, so a nil *Catalog is not
	// reached; the database-backed cases live in provision_test.go.
	tests := []struct {
		name  string
		req   catalog.CreateRequest
		field string
	}{
		{"bad plan", catalog.CreateRequest{Subdomain: "acme", Plan: "gold"}, "plan"},
		{"bad tier", catalog.CreateRequest{Subdomain: "acme", Plan: "free", Tier: "cluster"}, "isolation"},
		{"bad user", catalog.CreateRequest{Subdomain: "acme", Plan: "free", AdminUser: "bob.acme"}, "user name"},
		{"short password", catalog.CreateRequest{Subdomain: "acme", Plan: "free", AdminPassword: "short"}, "admin password"},
		{"long name", catalog.CreateRequest{Subdomain: "acme", Plan: "free", Name: strings.Repeat("n", 201)}, "name"},
		{"bad subdomain", catalog.CreateRequest{Subdomain: "Acme", Plan: "free"}, "subdomain"},
	}
	var c *catalog.Catalog
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Create(t.Context(), tt.req)
			var ve *catalog.ValidationError
			if !errors.As(err, &ve) || ve.Field != tt.field {
				t.Fatalf("Create(%+v) = %v; want a ValidationError on %s", tt.req, err, tt.field)
			}
		})
	}
}

// FuzzValidateSubdomain checks that whatever ValidateSubdomain accepts is a
// lowercase DNS label.
func FuzzValidateSubdomain(f *testing.F) {
	for _, s := range []string{"acme", "a-b", "-a", "A", strings.Repeat("z", 64), "admin", "x'; drop", "\x00", "ä"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if catalog.ValidateSubdomain(s) != nil {
			return
		}
		if len(s) == 0 || len(s) > 63 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" ||
			s[0] == '-' || s[len(s)-1] == '-' {
			t.Fatalf("accepted %q", s)
		}
	})
}
