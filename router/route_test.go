package router

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// directory is an in-memory Directory for policy tests.
type directory struct {
	tenants  map[string]*catalog.Tenant
	backends map[string]*catalog.Backend
}

func (d directory) TenantBySubdomain(_ context.Context, sub string) (*catalog.Tenant, error) {
	if t, ok := d.tenants[sub]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("tenant %q: %w", sub, catalog.ErrNotFound)
}

func (d directory) Backend(_ context.Context, name string) (*catalog.Backend, error) {
	if b, ok := d.backends[name]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("backend %q: %w", name, catalog.ErrNotFound)
}

func (d directory) User(context.Context, string, string) (*catalog.User, error) {
	return nil, catalog.ErrNotFound
}

var _ Directory = directory{}

func TestRoutePerTier(t *testing.T) {
	dir := directory{
		tenants: map[string]*catalog.Tenant{
			"free":   {ID: "11", Subdomain: "free", Plan: "free", Features: json.RawMessage(`{"sso": false, "note": "it's"}`), Tier: catalog.TierShared, Status: catalog.StatusActive, Backend: "main", Database: "shared"},
			"pro":    {ID: "12", Subdomain: "pro", Plan: "pro", Tier: catalog.TierSchema, Status: catalog.StatusActive, Backend: "main", Database: "schemas", SchemaName: "tenant_pro"},
			"big":    {ID: "13", Subdomain: "big", Plan: "enterprise", Features: json.RawMessage(`{"sso": true}`), Tier: catalog.TierDatabase, Status: catalog.StatusActive, Backend: "eu", Database: "tenant_big", LoginPassword: "bigpw"},
			"old":    {ID: "16", Subdomain: "old", Tier: catalog.TierDatabase, Status: catalog.StatusActive, Backend: "eu", Database: "tenant_old"},
			"frozen": {ID: "14", Subdomain: "frozen", Tier: catalog.TierShared, Status: catalog.StatusSuspended, Backend: "main"},
			"new":    {ID: "15", Subdomain: "new", Tier: catalog.TierShared, Status: catalog.StatusProvisioning, Backend: "main"},
		},
		backends: map[string]*catalog.Backend{
			"main": {Name: "main", AdminDSN: "postgres://admin:secret@127.0.0.1:5432/postgres?sslmode=disable", ServingUser: "serve", ServingPassword: "pw"},
			"eu":   {Name: "eu", AdminDSN: "host=/tmp/pg port=6543 user=admin sslmode=prefer", ServingUser: "serve"},
		},
	}
	r := NewResolver(dir)
	ctx := context.Background()
	tests := []struct {
		sub           string
		wantAddr      string
		wantDB        string
		wantUser      string
		wantPassword  string
		wantSetup     []string
		wantErrorCode pgerr.Code
		// routeFails: Tenant admits it, Route refuses it with wantErrorCode.
		routeFails bool
	}{
		{sub: "free", wantAddr: "127.0.0.1:5432", wantDB: "shared", wantUser: "serve", wantPassword: "pw", wantSetup: []string{"SET app.tenant_id = '11'", `SET search_path = "$user", public, tenantproxy_ns, pg_catalog`, "SET tenant.plan = 'free'", `SET tenant.features = '{"sso": false, "note": "it''s"}'`}},
		{sub: "pro", wantAddr: "127.0.0.1:5432", wantDB: "schemas", wantUser: "serve", wantPassword: "pw", wantSetup: []string{`SET ROLE "tenant_pro"`, `SET search_path = "tenant_pro", tenantproxy_ns, pg_catalog`,
			"SET tenant.plan = 'pro'", "SET tenant.features = '{}'"}},
		// The database tier logs in as its own role, never as the
		// serving role, even before it has one.
		{sub: "big", wantAddr: "/tmp/pg:6543", wantDB: "tenant_big", wantUser: "tenant_big", wantPassword: "bigpw",
			wantSetup: []string{"SET tenant.plan = 'enterprise'", `SET tenant.features = '{"sso": true}'`}},
		{sub: "old", wantErrorCode: pgerr.CodeInternal, routeFails: true},
		{sub: "frozen", wantErrorCode: pgerr.CodeTenantSuspended},
		{sub: "new", wantErrorCode: pgerr.CodeTenantUnavailable},
		{sub: "nope", wantErrorCode: pgerr.CodeUnknownTenant},
	}
	for _, tt := range tests {
		t.Run(tt.sub, func(t *testing.T) {
			tn, err := r.Tenant(ctx, tt.sub)
			if tt.wantErrorCode != pgerr.CodeInternal && !tt.routeFails {
				if pgerr.CodeOf(err) != tt.wantErrorCode {
					t.Fatalf("Tenant(%q) error %v; want code %d", tt.sub, err, tt.wantErrorCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rt, err := r.Route(ctx, tn)
			if tt.routeFails {
				if err == nil || pgerr.CodeOf(err) != tt.wantErrorCode {
					t.Fatalf("Route(%q) = %+v, %v; want error code %d", tt.sub, rt, err, tt.wantErrorCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rt.Addr != tt.wantAddr || rt.Database != tt.wantDB || rt.User != tt.wantUser || rt.Password != tt.wantPassword || !slices.Equal(rt.Setup, tt.wantSetup) {
				t.Fatalf("Route(%q) = %+v", tt.sub, rt)
			}
			if rt.TLS != nil {
				t.Fatalf("Route(%q) requires TLS for a DSN that does not", tt.sub)
			}
		})
	}
}

// TestLookupThenAdmit is the order the proxy asks in: Lookup says nothing
// of a tenant's state (nil for an unknown one, so the proxy can answer it
// like a wrong password), Admit tells the state once the client has
// authenticated.
func TestLookupThenAdmit(t *testing.T) {
	r := NewResolver(directory{tenants: map[string]*catalog.Tenant{
		"free":   {ID: "11", Subdomain: "free", Status: catalog.StatusActive},
		"frozen": {ID: "14", Subdomain: "frozen", Status: catalog.StatusSuspended},
		"new":    {ID: "15", Subdomain: "new", Status: catalog.StatusProvisioning},
	}})
	ctx := context.Background()
	if tn, err := r.Lookup(ctx, "nope"); tn != nil || err != nil {
		t.Fatalf("Lookup(unknown) = %v, %v; want nil, nil", tn, err)
	}
	for sub, want := range map[string]pgerr.Code{"free": pgerr.CodeInternal, "frozen": pgerr.CodeTenantSuspended, "new": pgerr.CodeTenantUnavailable} {
		tn, err := r.Lookup(ctx, sub)
		if err != nil || tn == nil || tn.Subdomain != sub {
			t.Fatalf("Lookup(%q) = %v, %v", sub, tn, err)
		}
		err = Admit(tn)
		if want == pgerr.CodeInternal && err != nil || want != pgerr.CodeInternal && pgerr.CodeOf(err) != want {
			t.Errorf("Admit(%s) = %v; want code %v", sub, err, want)
		}
	}
}

func TestQuoting(t *testing.T) {
	if got := QuoteIdent(`a"b`); got != `"a""b"` {
		t.Errorf("QuoteIdent = %s", got)
	}
	if got := QuoteLiteral(`it's`); got != `'it''s'` {
		t.Errorf("QuoteLiteral = %s", got)
	}
	if got := QuoteLiteral(`a\b`); got != `E'a\\b'` {
		t.Errorf("QuoteLiteral = %s", got)
	}
}

// TestStartupSearchPathKeepsTheNamespace: a search_path given at
// connection start keeps the tenant's lock and channel functions after
// the client's schemas, where the tier has them.
func TestStartupSearchPathKeepsTheNamespace(t *testing.T) {
	in := []Setting{{Name: "application_name", Value: "x"}, {Name: "search_path", Value: "app, public"}, {Name: "SEARCH_PATH", Value: " "}}
	got := (&Route{Channels: "0123456789abcdef."}).StartupSettings(in)
	want := []Setting{{Name: "application_name", Value: "x"}, {Name: "search_path", Value: "app, public, tenantproxy_ns, pg_catalog"}, {Name: "SEARCH_PATH", Value: "tenantproxy_ns, pg_catalog"}}
	if !slices.Equal(got, want) {
		t.Errorf("StartupSettings = %v; want %v", got, want)
	}
	if in[1].Value != "app, public" {
		t.Errorf("StartupSettings changed its argument: %v", in)
	}
	if got := (&Route{}).StartupSettings(in); !slices.Equal(got, in) {
		t.Errorf("database tier StartupSettings = %v; want them unchanged", got)
	}
}
