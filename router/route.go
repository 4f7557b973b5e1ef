package router

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// Directory is what routing needs from the catalog. *catalog.Catalog
// implements it; look-ups of missing rows wrap catalog.ErrNotFound.
type Directory interface {
	TenantBySubdomain(ctx context.Context, subdomain string) (*catalog.Tenant, error)
	Backend(ctx context.Context, name string) (*catalog.Backend, error)
	User(ctx context.Context, tenantID, username string) (*catalog.User, error)
}

var _ Directory = (*catalog.Catalog)(nil)

// Route says where and as whom a tenant's session runs.
type Route struct {
	Tenant *catalog.Tenant
	// Backend is the catalog name of the server.
	Backend string
	// Addr is "host:port"; a host starting with '/' is the directory of
	// the server's unix socket, as in libpq and pool.Target.
	Addr string
	// TLS is the client TLS configuration toward the backend, nil for
	// plaintext (sslmode disable, allow or prefer in the backend's DSN).
	TLS *tls.Config
	// Database, User and Password are the login to the backend: the
	// tenant's database, and the backend's serving role or, in the
	// database tier, the tenant's own login role.
	Database, User, Password string
	// Setup is SQL to run on the server connection before the client's
	// first statement, e.g. SET app.tenant_id = '42'.
	Setup []string
	// Channels is the prefix of the tenant's LISTEN/NOTIFY channels on
	// the server (migrations.ChannelPrefix), "" in the database tier,
	// whose database is the tenant's own.
	Channels string
}

// Resolver turns tenants into Routes. It is safe for concurrent use.
type Resolver struct {
	dir Directory
	// locs caches backendAddr by admin DSN: parsing a DSN (pgconn reads
	// the environment and files for defaults) cost about 8% of the proxy's
	// CPU when it ran for every client connection. A changed DSN is a new
	// key; backends are few.
	locs sync.Map // string -> backendLoc
}

// backendLoc is a backend's server location as backendAddr found it.
type backendLoc struct {
	addr string
	tls  *tls.Config
	err  error
}

// NewResolver returns a Resolver over dir.
func NewResolver(dir Directory) *Resolver {
	return &Resolver{dir: dir}
}

// Tenant looks up an active tenant by subdomain. Errors: pgerr.CodeUnknownTenant,
// pgerr.CodeTenantSuspended, pgerr.CodeTenantUnavailable (still provisioning), or
// pgerr.CodeInternal wrapping a catalog failure. The proxy does not use it
// before authentication, where it would tell strangers which tenants
// exist: it uses Lookup, authenticates, then asks Admit.
func (r *Resolver) Tenant(ctx context.Context, subdomain string) (*catalog.Tenant, error) {
	t, err := r.Lookup(ctx, subdomain)
	if err != nil {
		return nil, err
	}
	if t == nil {
		return nil, pgerr.Errorf(pgerr.CodeUnknownTenant, "tenant %q does not exist", subdomain)
	}
	if err := Admit(t); err != nil {
		return nil, err
	}
	return t, nil
}

// Lookup returns the tenant with that subdomain in any status, or nil when
// there is none; an error is pgerr.CodeTenantUnavailable wrapping a
// catalog failure.
func (r *Resolver) Lookup(ctx context.Context, subdomain string) (*catalog.Tenant, error) {
	t, err := r.dir.TenantBySubdomain(ctx, subdomain)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		// Only a tenant the catalog never answered for gets here (a known
		// one is served from the last known state): the same answer for
		// every name, so it tells nothing of which tenants exist.
		return nil, &pgerr.Error{Code: pgerr.CodeTenantUnavailable, Msg: "the tenant catalog cannot be reached; try again later", Err: err}
	}
	return t, nil
}

// Admit returns nil when t's sessions may start, else the error the
// client gets: pgerr.CodeTenantSuspended or pgerr.CodeTenantUnavailable
// (still provisioning). It reveals the tenant's state, so the proxy asks
// only once the client has authenticated as one of its users.
func Admit(t *catalog.Tenant) error {
	switch t.Status {
	case catalog.StatusActive:
		return nil
	case catalog.StatusSuspended:
		return pgerr.Errorf(pgerr.CodeTenantSuspended, "tenant %q is suspended", t.Subdomain)
	default:
		return pgerr.Errorf(pgerr.CodeTenantUnavailable, "tenant %q is not available yet", t.Subdomain)
	}
}

// User returns a tenant's login, or nil when the tenant has no such user.
func (r *Resolver) User(ctx context.Context, t *catalog.Tenant, name string) (*catalog.User, error) {
	u, err := r.dir.User(ctx, t.ID, name)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, &pgerr.Error{Code: pgerr.CodeInternal, Msg: "user look-up failed", Err: err}
	}
	return u, nil
}

// Route resolves an active tenant to its server, database, login role and
// session setup.
func (r *Resolver) Route(ctx context.Context, t *catalog.Tenant) (*Route, error) {
	b, err := r.dir.Backend(ctx, t.Backend)
	if err != nil {
		return nil, &pgerr.Error{Code: pgerr.CodeInternal, Msg: "backend look-up failed", Err: err}
	}
	rt := &Route{Tenant: t, Backend: b.Name, Database: t.Database, User: b.ServingUser, Password: b.ServingPassword}
	loc, ok := r.locs.Load(b.AdminDSN)
	if !ok {
		var l backendLoc
		l.addr, l.tls, l.err = backendAddr(b.AdminDSN)
		loc, _ = r.locs.LoadOrStore(b.AdminDSN, l)
	}
	l := loc.(backendLoc)
	if rt.Addr, rt.TLS, err = l.addr, l.tls, l.err; err != nil {
		// The DSN holds a secret: report the backend by name only.
		return nil, &pgerr.Error{Code: pgerr.CodeInternal, Msg: "backend address", Err: fmt.Errorf("backend %q: unusable DSN", b.Name)}
	}
	switch t.Tier {
	case catalog.TierShared:
		// The setting the shared tier's RLS policies read: one name for
		// the migrations that create them and for the proxy.
		rt.Setup = []string{
			"SET " + migrations.TenantGUC + " = " + QuoteLiteral(t.ID),
			`SET search_path = "$user", public, ` + namespacePath,
		}
		rt.Channels = migrations.ChannelPrefix(migrations.SharedNamespace(t.ID))
	case catalog.TierSchema:
		if t.SchemaName == "" {
			return nil, &pgerr.Error{Code: pgerr.CodeInternal, Msg: "tenant has no schema", Err: fmt.Errorf("tenant %q: schema tier without schema_name", t.Subdomain)}
		}
		rt.Setup = []string{
			"SET ROLE " + QuoteIdent(t.SchemaName),
			"SET search_path = " + QuoteIdent(t.SchemaName) + ", " + namespacePath,
		}
		rt.Channels = migrations.ChannelPrefix(migrations.SchemaNamespace(t.SchemaName))
	case catalog.TierDatabase:
		// Its own login role, so that what its code does to the role
		// (ALTER ROLE CURRENT_USER SET, a password) stays its own. A tenant
		// without one (created before tenants had roles, not yet upgraded)
		// is refused rather than let in as the serving role every tenant
		// shares.
		if t.LoginPassword == "" {
			return nil, &pgerr.Error{Code: pgerr.CodeInternal, Msg: "tenant has no login role",
				Err: fmt.Errorf("tenant %q: database tier without a login role; run tenantproxy migrate up", t.Subdomain)}
		}
		rt.User, rt.Password = t.LoginRole(), t.LoginPassword
	default:
		return nil, &pgerr.Error{Code: pgerr.CodeInternal, Msg: "unknown tier", Err: fmt.Errorf("tenant %q: tier %q", t.Subdomain, t.Tier)}
	}
	rt.Setup = append(rt.Setup, PlanSettings(t)...)
	return rt, nil
}

// namespacePath ends the search_path of the tiers whose tenants share a
// database: the tenant's own advisory lock and notification functions
// (migrations.NamespaceSchema), then pg_catalog. PostgreSQL searches
// pg_catalog first unless the path names it, so naming it after them is
// what lets unqualified calls, also in the tenant's functions and
// triggers, reach the tenant's functions and not the database's one
// space. The schemas before them keep the first place, so
// current_schema() and where CREATE puts objects do not change.
const namespacePath = migrations.NamespaceSchema + ", pg_catalog"

// StartupSettings returns settings, a client's start-up settings, with
// namespacePath added to the end of a search_path it names in the tiers
// that have one (Channels set): the client's schemas come first, as it
// asked, and its advisory locks and channels stay its own. A path that
// names pg_catalog before them gets pg_catalog's functions, which
// PostgreSQL denies there (migrations.Harden). settings is not modified.
func (rt *Route) StartupSettings(settings []Setting) []Setting {
	if rt.Channels == "" {
		return settings
	}
	out := make([]Setting, len(settings))
	for i, s := range settings {
		if strings.EqualFold(s.Name, "search_path") {
			if strings.TrimSpace(s.Value) == "" {
				s.Value = namespacePath
			} else {
				s.Value += ", " + namespacePath
			}
		}
		out[i] = s
	}
	return out
}

// Settings under TenantSettingPrefix carry the tenant's plan and feature
// flags to SQL, for apps and row-level policies to gate on; the policy
// refuses every change to them, so they are as read-only as the tenant
// setting.
const (
	TenantSettingPrefix = "tenant."
	PlanSetting         = TenantSettingPrefix + "plan"
	FeaturesSetting     = TenantSettingPrefix + "features"
)

// PlanSettings sets PlanSetting and FeaturesSetting (the catalog's
// features as JSON text); the proxy sets them again on a session whose
// tenant's plan or features change. Being part of Setup they are part of the
// context's key (pool.TxTarget), so a changed plan or feature is a new
// context, and a server connection switching contexts is neutralised
// (RESET ALL) before the next context's values are set.
func PlanSettings(t *catalog.Tenant) []string {
	features := string(t.Features)
	if features == "" {
		features = "{}"
	}
	return []string{
		"SET " + PlanSetting + " = " + QuoteLiteral(t.Plan),
		"SET " + FeaturesSetting + " = " + QuoteLiteral(features),
	}
}

// backendAddr takes the server location and TLS requirement from a
// backend's admin DSN; the credentials in it are for provisioning only.
func backendAddr(dsn string) (addr string, tlsCfg *tls.Config, err error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "", nil, err
	}
	tlsCfg = cfg.TLSConfig
	for _, fb := range cfg.Fallbacks {
		// sslmode=prefer/allow: plaintext is acceptable, and is what the
		// pool speaks when TLS is optional.
		if fb.TLSConfig == nil {
			tlsCfg = nil
		}
	}
	if strings.HasPrefix(cfg.Host, "/") {
		tlsCfg = nil
	}
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), tlsCfg, nil
}

// QuoteIdent quotes s as an SQL identifier.
func QuoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// QuoteLiteral quotes s as an SQL string literal that means the same
// whatever standard_conforming_strings is.
func QuoteLiteral(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}
