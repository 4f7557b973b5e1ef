package router

import (
	"slices"
	"testing"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

func TestIdentify(t *testing.T) {
	base := IdentifyConfig{BaseDomain: "db.example.com"}
	tests := []struct {
		name       string
		cfg        IdentifyConfig
		in         Startup
		wantTenant string
		wantUser   string
		wantCode   pgerr.Code
		wantSet    []Setting
	}{
		{name: "user suffix", cfg: base, in: Startup{User: "alice.acme"}, wantTenant: "acme", wantUser: "alice"},
		{name: "user with dots splits at the last", cfg: base, in: Startup{User: "a.b.acme"}, wantTenant: "acme", wantUser: "a.b"},
		{name: "options -c", cfg: base, in: Startup{User: "alice", Options: "-c tenant=acme"}, wantTenant: "acme", wantUser: "alice"},
		{name: "options -c joined", cfg: base, in: Startup{User: "alice", Options: "-ctenant=acme"}, wantTenant: "acme", wantUser: "alice"},
		{name: "options long form", cfg: base, in: Startup{User: "alice", Options: "--tenant=acme"}, wantTenant: "acme", wantUser: "alice"},
		{name: "options keep other settings", cfg: base, in: Startup{User: "alice", Options: `-c tenant=acme -c application_name=my\ app --statement-timeout=5s`},
			wantTenant: "acme", wantUser: "alice", wantSet: []Setting{{"application_name", "my app"}, {"statement_timeout", "5s"}}},
		{name: "sni", cfg: base, in: Startup{ServerName: "acme.db.example.com", User: "alice"}, wantTenant: "acme", wantUser: "alice"},
		{name: "sni is case-insensitive", cfg: base, in: Startup{ServerName: "ACME.db.example.com.", User: "alice"}, wantTenant: "acme", wantUser: "alice"},
		{name: "sni outside base domain names nothing", cfg: base, in: Startup{ServerName: "localhost", User: "alice.acme"}, wantTenant: "acme", wantUser: "alice"},
		{name: "sni of reserved names nothing", cfg: base, in: Startup{ServerName: "www.db.example.com", User: "alice"}, wantCode: pgerr.CodeNoTenant},
		{name: "sni disabled without base domain", cfg: IdentifyConfig{}, in: Startup{ServerName: "acme.db.example.com", User: "alice"}, wantCode: pgerr.CodeNoTenant},
		{name: "agreeing sources", cfg: base, in: Startup{ServerName: "acme.db.example.com", User: "alice.acme", Options: "-c tenant=acme"}, wantTenant: "acme", wantUser: "alice"},
		{name: "sni and user disagree", cfg: base, in: Startup{ServerName: "acme.db.example.com", User: "alice.beta"}, wantCode: pgerr.CodeConflictingTenant},
		{name: "options and user disagree", cfg: base, in: Startup{User: "alice.beta", Options: "-c tenant=acme"}, wantCode: pgerr.CodeConflictingTenant},
		{name: "options twice disagree", cfg: base, in: Startup{User: "alice", Options: "-c tenant=acme -c tenant=beta"}, wantCode: pgerr.CodeConflictingTenant},
		{name: "disabled source ignored", cfg: IdentifyConfig{Order: []Source{SourceOptions}}, in: Startup{User: "alice.beta", Options: "-c tenant=acme"}, wantTenant: "acme", wantUser: "alice.beta"},
		{name: "custom separator", cfg: IdentifyConfig{UserSeparator: "@"}, in: Startup{User: "a.b@acme"}, wantTenant: "acme", wantUser: "a.b"},
		{name: "no tenant", cfg: base, in: Startup{User: "alice"}, wantCode: pgerr.CodeNoTenant},
		{name: "invalid tenant in options", cfg: base, in: Startup{User: "alice", Options: "-c tenant=Acme!"}, wantCode: pgerr.CodeInvalidTenant},
		{name: "reserved tenant in options", cfg: base, in: Startup{User: "alice", Options: "-c tenant=admin"}, wantCode: pgerr.CodeInvalidTenant},
		{name: "invalid tenant in user", cfg: base, in: Startup{User: "alice.-x"}, wantCode: pgerr.CodeInvalidTenant},
		{name: "empty user name", cfg: base, in: Startup{User: ".acme"}, wantCode: pgerr.CodeNoUser},
		{name: "other backend switch refused", cfg: base, in: Startup{User: "alice.acme", Options: "-B 100"}, wantCode: pgerr.CodeProtocolViolation},
		{name: "-c without value", cfg: base, in: Startup{User: "alice.acme", Options: "-c"}, wantCode: pgerr.CodeProtocolViolation},
		{name: "-c without equals", cfg: base, in: Startup{User: "alice.acme", Options: "-c tenant"}, wantCode: pgerr.CodeProtocolViolation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := Identify(tt.cfg, tt.in)
			if tt.wantCode != pgerr.CodeInternal {
				if err == nil || pgerr.CodeOf(err) != tt.wantCode {
					t.Fatalf("Identify(%+v) = %+v, %v; want code %d", tt.in, id, err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("Identify(%+v): %v", tt.in, err)
			}
			if id.Tenant != tt.wantTenant || id.User != tt.wantUser {
				t.Fatalf("Identify(%+v) = tenant %q user %q; want %q %q", tt.in, id.Tenant, id.User, tt.wantTenant, tt.wantUser)
			}
			if !slices.Equal(id.Settings, tt.wantSet) {
				t.Fatalf("settings = %q; want %q", id.Settings, tt.wantSet)
			}
		})
	}
}

func TestSplitOptionsFollowsPostgres(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  -c  a=b\t", []string{"-c", "a=b"}},
		{`-c a=b\ c`, []string{"-c", "a=b c"}},
		{`-c a=b\\c`, []string{"-c", `a=b\c`}},
		{`-c a=b\`, []string{"-c", `a=b\`}},
	}
	for _, tt := range tests {
		if got := splitOptions(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("splitOptions(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestIdentifyConfigValidate(t *testing.T) {
	if err := (IdentifyConfig{Order: []Source{"dns"}}).Validate(); err == nil {
		t.Error("unknown source accepted")
	}
	if err := (IdentifyConfig{Order: []Source{SourceUser, SourceUser}}).Validate(); err == nil {
		t.Error("duplicate source accepted")
	}
	if err := (IdentifyConfig{}).Validate(); err != nil {
		t.Errorf("zero config: %v", err)
	}
}

// FuzzIdentify checks that identification never panics, and that a tenant
// it returns is always a valid id and never left in the user name.
func FuzzIdentify(f *testing.F) {
	f.Add("acme.db.example.com", "alice.acme", "-c tenant=acme")
	f.Add("", "a\\ b", `--tenant=x -c\ y=\\`)
	f.Add("x.y.db.example.com", ".", "-c")
	f.Fuzz(func(t *testing.T, sni, user, options string) {
		id, err := Identify(IdentifyConfig{BaseDomain: "db.example.com"}, Startup{ServerName: sni, User: user, Options: options})
		if err != nil {
			return
		}
		if !ValidTenantID(id.Tenant, DefaultReserved) {
			t.Fatalf("invalid tenant %q accepted", id.Tenant)
		}
		if id.Source == SourceUser && id.User+"."+id.Tenant != user {
			t.Fatalf("user %q split into %q and %q", user, id.User, id.Tenant)
		}
		for _, s := range id.Settings {
			if s.Name == TenantOption {
				t.Fatalf("tenant marker left in settings %q", id.Settings)
			}
		}
	})
}

// FuzzParseOptions checks that option parsing never panics and that every
// setting it returns has a name.
func FuzzParseOptions(f *testing.F) {
	f.Add("-c tenant=acme")
	f.Add(`-c a=b\ c --x-y=z -cq=`)
	f.Fuzz(func(t *testing.T, options string) {
		settings, err := ParseOptions(options)
		if err != nil {
			return
		}
		for _, s := range settings {
			if s.Name == "" {
				t.Fatalf("ParseOptions(%q) returned an unnamed setting", options)
			}
		}
	})
}
