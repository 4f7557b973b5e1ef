package router

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// Source is one place a connection can name its tenant.
type Source string

// The identification sources (the README's "Connecting through the proxy").
const (
	// SourceSNI reads the tenant from the TLS server name <tenant>.<base-domain>.
	SourceSNI Source = "sni"
	// SourceOptions reads "-c tenant=<id>" (or "--tenant=<id>") from the
	// startup "options" parameter.
	SourceOptions Source = "options"
	// SourceUser reads the tenant from a user name <name><sep><tenant>.
	SourceUser Source = "user"
)

// TenantOption is the setting name that carries the tenant in "options".
const TenantOption = "tenant"

// DefaultReserved are subdomains that never name a tenant.
var DefaultReserved = []string{"www", "api", "admin", "app"}

var tenantIDPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// IdentifyConfig says where tenants are looked for. The zero value looks in
// every source with the defaults below.
type IdentifyConfig struct {
	// Order lists the enabled sources. Zero means sni, options, user. All
	// enabled sources are consulted: the first that names a tenant wins and
	// any other that names a different one is an error.
	Order []Source
	// BaseDomain is the domain tenants' subdomains live under, e.g.
	// "db.example.com". Empty disables SNI identification.
	BaseDomain string
	// UserSeparator separates the user name from the tenant in the user
	// source. Zero means ".". The last occurrence splits, so user names may
	// themselves contain the separator.
	UserSeparator string
	// Reserved subdomains are never tenants. Nil means DefaultReserved.
	Reserved []string
}

func (c IdentifyConfig) withDefaults() IdentifyConfig {
	if len(c.Order) == 0 {
		c.Order = []Source{SourceSNI, SourceOptions, SourceUser}
	}
	if c.UserSeparator == "" {
		c.UserSeparator = "."
	}
	if c.Reserved == nil {
		c.Reserved = DefaultReserved
	}
	c.BaseDomain = strings.ToLower(strings.Trim(c.BaseDomain, "."))
	return c
}

// Validate reports a configuration that cannot work.
func (c IdentifyConfig) Validate() error {
	c = c.withDefaults()
	for i, s := range c.Order {
		switch s {
		case SourceSNI, SourceOptions, SourceUser:
		default:
			return fmt.Errorf("router: unknown identification source %q", s)
		}
		if slices.Contains(c.Order[:i], s) {
			return fmt.Errorf("router: identification source %q listed twice", s)
		}
	}
	if strings.ContainsAny(c.UserSeparator, "\x00") {
		return fmt.Errorf("router: bad user separator %q", c.UserSeparator)
	}
	return nil
}

// ValidTenantID reports whether id has the shape of a tenant id (a DNS
// label of lower-case letters, digits and inner hyphens, as the catalog
// requires of a subdomain) and is not reserved.
func ValidTenantID(id string, reserved []string) bool {
	return tenantIDPattern.MatchString(id) && !slices.Contains(reserved, id)
}

// Startup is what identification looks at: the TLS server name (empty
// without TLS or SNI) and the startup parameters "user" and "options".
type Startup struct {
	ServerName string
	User       string
	Options    string
}

// Setting is one "-c name=value" from the startup options.
type Setting struct {
	Name, Value string
}

// Identity is the outcome of identification, with the tenant marker
// stripped from everything that could reach PostgreSQL.
type Identity struct {
	// Tenant is the tenant's subdomain.
	Tenant string
	// Source is the first enabled source that named the tenant.
	Source Source
	// User is the tenant user name the client authenticates as.
	User string
	// Settings are the startup options other than the tenant marker, in
	// order.
	Settings []Setting
}

// Identify finds the tenant a connection names. Errors are *Error with
// pgerr.CodeNoTenant, pgerr.CodeConflictingTenant, pgerr.CodeInvalidTenant or
// pgerr.CodeProtocolViolation.
func Identify(cfg IdentifyConfig, s Startup) (Identity, error) {
	cfg = cfg.withDefaults()
	settings, err := ParseOptions(s.Options)
	if err != nil {
		return Identity{}, err
	}
	id := Identity{User: s.User}
	for _, st := range settings {
		if st.Name != TenantOption {
			id.Settings = append(id.Settings, st)
		}
	}
	for _, src := range cfg.Order {
		var tenant string
		switch src {
		case SourceSNI:
			tenant, err = fromSNI(cfg, s.ServerName)
		case SourceOptions:
			tenant, err = fromOptions(cfg, settings)
		case SourceUser:
			var user string
			user, tenant, err = fromUser(cfg, s.User)
			if tenant != "" {
				id.User = user
			}
		}
		if err != nil {
			return Identity{}, err
		}
		switch {
		case tenant == "":
		case id.Tenant == "":
			id.Tenant, id.Source = tenant, src
		case tenant != id.Tenant:
			return Identity{}, pgerr.Errorf(pgerr.CodeConflictingTenant,
				"conflicting tenants: %s names %q but %s names %q", id.Source, id.Tenant, src, tenant)
		}
	}
	if id.Tenant == "" {
		return Identity{}, pgerr.Errorf(pgerr.CodeNoTenant,
			"no tenant in the connection: use user \"<name>%s<tenant>\" or options \"-c tenant=<tenant>\"", cfg.UserSeparator)
	}
	if id.User == "" {
		return Identity{}, pgerr.Errorf(pgerr.CodeNoUser, "no user name specified in startup packet")
	}
	return id, nil
}

// fromSNI returns the subdomain label of serverName directly under the
// base domain. A server name outside the base domain names no tenant: it
// is how clients reach the proxy by IP or by another name.
func fromSNI(cfg IdentifyConfig, serverName string) (string, error) {
	if cfg.BaseDomain == "" || serverName == "" {
		return "", nil
	}
	label, ok := strings.CutSuffix(strings.ToLower(strings.TrimSuffix(serverName, ".")), "."+cfg.BaseDomain)
	if !ok || label == "" || strings.Contains(label, ".") {
		return "", nil
	}
	if !ValidTenantID(label, cfg.Reserved) {
		return "", nil
	}
	return label, nil
}

func fromOptions(cfg IdentifyConfig, settings []Setting) (string, error) {
	tenant := ""
	for _, st := range settings {
		if st.Name != TenantOption {
			continue
		}
		if !ValidTenantID(st.Value, cfg.Reserved) {
			return "", pgerr.Errorf(pgerr.CodeInvalidTenant, "invalid tenant %q", st.Value)
		}
		if tenant != "" && tenant != st.Value {
			return "", pgerr.Errorf(pgerr.CodeConflictingTenant, "conflicting tenants in options: %q and %q", tenant, st.Value)
		}
		tenant = st.Value
	}
	return tenant, nil
}

func fromUser(cfg IdentifyConfig, user string) (name, tenant string, err error) {
	i := strings.LastIndex(user, cfg.UserSeparator)
	if i < 0 {
		return user, "", nil
	}
	name, tenant = user[:i], user[i+len(cfg.UserSeparator):]
	if !ValidTenantID(tenant, cfg.Reserved) {
		return "", "", pgerr.Errorf(pgerr.CodeInvalidTenant, "invalid tenant %q in user name", tenant)
	}
	return name, tenant, nil
}

// ParseOptions splits a startup "options" string the way PostgreSQL does
// (whitespace separates arguments, a backslash takes the next character
// literally) and returns its "-c name=value", "-cname=value" and
// "--name=value" settings. Dashes in names become underscores, as in
// PostgreSQL. Any other backend switch is refused: the proxy cannot apply
// it to a pooled server connection.
func ParseOptions(options string) ([]Setting, error) {
	args := splitOptions(options)
	var out []Setting
	for i := 0; i < len(args); i++ {
		a := args[i]
		var kv string
		switch {
		case a == "-c":
			if i+1 == len(args) {
				return nil, pgerr.Errorf(pgerr.CodeProtocolViolation, "invalid command-line argument in options: -c requires a value")
			}
			i++
			kv = args[i]
		case strings.HasPrefix(a, "--"):
			kv = a[2:]
		case strings.HasPrefix(a, "-c"):
			kv = a[2:]
		default:
			return nil, pgerr.Errorf(pgerr.CodeProtocolViolation, "unsupported command-line argument in options: %q", a)
		}
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return nil, pgerr.Errorf(pgerr.CodeProtocolViolation, "-c %s requires a value", kv)
		}
		out = append(out, Setting{Name: strings.ReplaceAll(name, "-", "_"), Value: value})
	}
	return out, nil
}

// splitOptions follows PostgreSQL's pg_split_opts.
func splitOptions(s string) []string {
	var args []string
	var b strings.Builder
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			return args
		}
		b.Reset()
		for i < len(s) && !isSpace(s[i]) {
			if s[i] == '\\' && i+1 < len(s) {
				i++
			}
			b.WriteByte(s[i])
			i++
		}
		args = append(args, b.String())
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}
