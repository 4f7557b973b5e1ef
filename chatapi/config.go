package chatapi

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Config configures a Server. ProxyDSN, ServiceSecret and OperatorToken are
// required; every other field has the default its comment states.
type Config struct {
	// ProxyDSN locates tenantproxy, e.g.
	// "postgres://127.0.0.1:6432/chat?sslmode=disable". User, password and
	// the tenant are set per tenant and must not be in it.
	ProxyDSN string
	// ServiceSecret derives every tenant's service password; all replicas
	// of the API must share it. At least 32 bytes.
	ServiceSecret []byte
	// OperatorToken is the bearer token of the /admin/ endpoints. At least
	// 16 bytes.
	OperatorToken string
	// BaseDomain makes Host "<tenant>.<BaseDomain>" name the tenant. Empty
	// disables identification by Host.
	BaseDomain string
	// ServiceUser is the tenant login the API uses. Zero means "chatapi".
	ServiceUser string
	// MaxTenantPools bounds the tenants with an open pool; the least
	// recently used pool is closed beyond it. Zero means 256.
	MaxTenantPools int
	// PoolMaxConns bounds each tenant's connections to the proxy. The proxy
	// pins a server connection per client connection in session mode, so
	// it stays small. Zero means 4.
	PoolMaxConns int
	// PoolIdleTimeout closes a tenant's connections idle this long, so a
	// quiet tenant holds none. Zero means 1 min.
	PoolIdleTimeout time.Duration
	// MetricTenants get their own tenant label in metrics; every other
	// tenant is counted as "other", which keeps label cardinality bounded.
	MetricTenants []string
	// TokenTTL is how long a token of POST /login is valid. Zero means 1 h.
	TokenTTL time.Duration
	// Logger receives one line per request. Nil means no logs.
	Logger *zap.Logger
	// Registerer receives the API's metrics. Nil means not registered.
	Registerer prometheus.Registerer
}

const (
	defaultServiceUser     = "chatapi"
	defaultMaxTenantPools  = 256
	defaultPoolMaxConns    = 4
	defaultPoolIdleTimeout = time.Minute
	defaultTokenTTL        = time.Hour
	minServiceSecret       = 32
	minOperatorToken       = 16
)

// withDefaults fills zero fields, validates the rest and parses ProxyDSN.
func (c Config) withDefaults() (Config, *pgxpool.Config, error) {
	var errs []error
	if c.ServiceUser == "" {
		c.ServiceUser = defaultServiceUser
	}
	if c.MaxTenantPools == 0 {
		c.MaxTenantPools = defaultMaxTenantPools
	}
	if c.PoolMaxConns == 0 {
		c.PoolMaxConns = defaultPoolMaxConns
	}
	if c.PoolIdleTimeout == 0 {
		c.PoolIdleTimeout = defaultPoolIdleTimeout
	}
	if c.TokenTTL == 0 {
		c.TokenTTL = defaultTokenTTL
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if len(c.ServiceSecret) < minServiceSecret {
		errs = append(errs, fmt.Errorf("service secret: %d bytes; want at least %d", len(c.ServiceSecret), minServiceSecret))
	}
	if len(c.OperatorToken) < minOperatorToken {
		errs = append(errs, fmt.Errorf("operator token: want at least %d bytes", minOperatorToken))
	}
	if c.MaxTenantPools < 0 || c.PoolMaxConns < 0 || c.PoolIdleTimeout < 0 {
		errs = append(errs, errors.New("pool limits must not be negative"))
	}
	if c.TokenTTL < 0 {
		errs = append(errs, errors.New("token TTL must not be negative"))
	}
	base, err := pgxpool.ParseConfig(c.ProxyDSN)
	switch {
	case c.ProxyDSN == "":
		errs = append(errs, errors.New("proxy DSN is required"))
	case err != nil:
		// The parse error may echo the DSN; it should hold no secret, but
		// an operator may have put one in anyway.
		errs = append(errs, errors.New("proxy DSN is not a valid PostgreSQL connection string"))
	}
	if err := errors.Join(errs...); err != nil {
		return c, nil, fmt.Errorf("chatapi: config: %w", err)
	}
	return c, base, nil
}
