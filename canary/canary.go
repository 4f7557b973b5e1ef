package canary

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// Directory is what the canary needs from the catalog; *catalog.Catalog
// implements it.
type Directory interface {
	List(ctx context.Context) ([]catalog.Tenant, error)
	EnsureServiceUser(ctx context.Context, tenantID, username, password string) error
}

var _ Directory = (*catalog.Catalog)(nil)

// User is the service login the canary keeps in every sampled tenant.
const User = "tenantproxy-canary"

// DefaultSample is how many tenants a check probes when Config.Sample is
// zero.
const DefaultSample = 20

// Config configures a Canary.
type Config struct {
	// ProxyAddr is the proxy's client listener, host:port. Required.
	ProxyAddr string
	// TLS is used toward the proxy when set; nil means plaintext.
	TLS *tls.Config
	// Sample is how many active tenants one check probes, chosen at
	// random each time. Zero means DefaultSample; negative means all.
	Sample int
	// Timeout bounds one check. Zero means 1 min.
	Timeout time.Duration
	// Logger receives violations (Error, severity=critical) and failed
	// checks (Warn). Nil means no logs.
	Logger *zap.Logger
	// Registerer receives the canary's metrics. Nil means not registered.
	Registerer prometheus.Registerer
}

// Canary checks isolation through the proxy. Safe for one check at a time.
type Canary struct {
	cfg        Config
	dir        Directory
	log        *zap.Logger
	password   string
	violations prometheus.Counter
	checks     *prometheus.CounterVec
}

// New returns a Canary. Its service password is random and lives as long
// as the Canary: the first check of each tenant stores its verifier.
func New(cfg Config, dir Directory) (*Canary, error) {
	if cfg.ProxyAddr == "" {
		return nil, errors.New("canary: the proxy address is required")
	}
	if _, _, err := net.SplitHostPort(cfg.ProxyAddr); err != nil {
		return nil, fmt.Errorf("canary: proxy address: %w", err)
	}
	if cfg.Sample == 0 {
		cfg.Sample = DefaultSample
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Minute
	}
	c := &Canary{
		cfg: cfg, dir: dir, log: cfg.Logger, password: rand.Text(),
		violations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tenantproxy_isolation_violations_total",
			Help: "Isolation violations the canary found: a tenant saw another tenant's canary row or schema, or ran with another context.",
		}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantproxy_isolation_checks_total",
			Help: "Canary checks by result: ok, violation, or error (the check could not complete).",
		}, []string{"result"}),
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if cfg.Registerer != nil {
		for _, m := range []prometheus.Collector{c.violations, c.checks} {
			if err := cfg.Registerer.Register(m); err != nil {
				return nil, fmt.Errorf("canary: metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Violation is one thing a tenant could see or be that it must not.
type Violation struct {
	Tenant string `json:"tenant"`
	// Other is the tenant whose data or context leaked, when known.
	Other string `json:"other,omitempty"`
	What  string `json:"what"`
}

// Report is the outcome of one check.
type Report struct {
	Tenants    []string    `json:"tenants"`
	Violations []Violation `json:"violations"`
}

// Check probes a sample of tenants once. A non-nil error means the check
// could not complete (and the report holds what it found so far);
// violations are in the report, logged and counted either way.
func (c *Canary) Check(ctx context.Context) (*Report, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	rep, err := c.check(ctx)
	for _, v := range rep.Violations {
		c.violations.Inc()
		c.log.Error("tenant isolation violated", zap.String("severity", "critical"),
			zap.String("tenant", v.Tenant), zap.String("other_tenant", v.Other), zap.String("what", v.What))
	}
	switch {
	case len(rep.Violations) > 0:
		c.checks.WithLabelValues("violation").Inc()
	case err != nil:
		c.checks.WithLabelValues("error").Inc()
	default:
		c.checks.WithLabelValues("ok").Inc()
	}
	return rep, err
}

// Run checks every interval until ctx ends, logging checks that could not
// complete. It is serve's scheduled mode; run it in a goroutine the caller
// owns and cancel ctx to stop it.
func (c *Canary) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := c.Check(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("isolation check incomplete", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe is one sampled tenant's connection and planted token.
type probe struct {
	t     catalog.Tenant
	conn  *pgconn.PgConn
	token string
	// table is the tenant's canary table (migrations.CanaryTable).
	table string
}

func (c *Canary) check(ctx context.Context) (*Report, error) {
	rep := &Report{Violations: []Violation{}}
	tenants, err := c.sample(ctx)
	if err != nil {
		return rep, err
	}
	var probes []*probe
	defer func() {
		for _, p := range probes {
			p.conn.Close(context.WithoutCancel(ctx))
		}
	}()
	for _, t := range tenants {
		rep.Tenants = append(rep.Tenants, t.Subdomain)
		p, err := c.plant(ctx, t)
		if err != nil {
			return rep, fmt.Errorf("canary: tenant %s: %w", t.Subdomain, err)
		}
		probes = append(probes, p)
	}
	for _, p := range probes {
		vs, err := c.verify(ctx, p, probes)
		rep.Violations = append(rep.Violations, vs...)
		if err != nil {
			return rep, fmt.Errorf("canary: tenant %s: %w", p.t.Subdomain, err)
		}
	}
	for _, p := range probes {
		if err := p.removeRows(ctx); err != nil {
			return rep, fmt.Errorf("canary: tenant %s: removing the canary row: %w", p.t.Subdomain, err)
		}
	}
	return rep, nil
}

// sample returns up to Config.Sample active tenants, chosen at random.
func (c *Canary) sample(ctx context.Context) ([]catalog.Tenant, error) {
	all, err := c.dir.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("canary: listing tenants: %w", err)
	}
	active := all[:0]
	for _, t := range all {
		if t.Status == catalog.StatusActive {
			active = append(active, t)
		}
	}
	for i := len(active) - 1; i > 0; i-- {
		j, err := rand.Int(rand.Reader, big.NewInt(int64(i+1)))
		if err != nil {
			return nil, err
		}
		active[i], active[int(j.Int64())] = active[int(j.Int64())], active[i]
	}
	if c.cfg.Sample > 0 && len(active) > c.cfg.Sample {
		active = active[:c.cfg.Sample]
	}
	return active, nil
}

// plant connects as t through the proxy and replaces t's canary row with a
// fresh random token, which no tenant can know before it is planted.
func (c *Canary) plant(ctx context.Context, t catalog.Tenant) (*probe, error) {
	if err := c.dir.EnsureServiceUser(ctx, t.ID, User, c.password); err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(c.cfg.ProxyAddr)
	// No database name: the proxy takes it for the one it serves
	// (serve --database), whatever that is.
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s sslmode=disable", host, port))
	if err != nil {
		return nil, err
	}
	cfg.User, cfg.Password, cfg.TLSConfig = User, c.password, c.cfg.TLS
	// Naming the tenant in options works whatever identification order
	// and user separator the proxy is configured with.
	cfg.RuntimeParams["options"] = "-c tenant=" + t.Subdomain
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting through the proxy: %w", err)
	}
	p := &probe{t: t, conn: conn, token: "canary:" + t.ID + ":" + rand.Text(), table: migrations.CanaryTable(migrations.Kind(t.Tier), t.SchemaName)}
	err = p.removeRows(ctx)
	if err == nil {
		err = conn.ExecParams(ctx, "INSERT INTO "+p.table+" (token) VALUES ($1)", [][]byte{[]byte(p.token)}, nil, nil, nil).Read().Err
	}
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("planting the canary row: %w", err)
	}
	return p, nil
}

// removeRows deletes the tenant's canary rows. It names them by prefix
// rather than relying on isolation, so that a check run while isolation is
// broken does not destroy other tenants' rows and hide the leak.
func (p *probe) removeRows(ctx context.Context) error {
	prefix := "canary:" + p.t.ID + ":%" // ids hold no ":", "%" or "_"
	return p.conn.ExecParams(ctx, "DELETE FROM "+p.table+" WHERE token LIKE $1", [][]byte{[]byte(prefix)}, nil, nil, nil).Read().Err
}

// verify checks, as p's tenant, its context and what it can see.
func (c *Canary) verify(ctx context.Context, p *probe, all []*probe) ([]Violation, error) {
	var vs []Violation
	violate := func(other, format string, args ...any) {
		vs = append(vs, Violation{Tenant: p.t.Subdomain, Other: other, What: fmt.Sprintf(format, args...)})
	}
	res := p.conn.ExecParams(ctx, "SELECT current_user, coalesce(current_setting('"+migrations.TenantGUC+"', true), ''), current_database()", nil, nil, nil, nil).Read()
	if res.Err != nil {
		return vs, res.Err
	}
	if len(res.Rows) == 1 {
		user, guc, db := string(res.Rows[0][0]), string(res.Rows[0][1]), string(res.Rows[0][2])
		switch {
		case db != p.t.Database:
			violate("", "session is in database %q, not the tenant's %q", db, p.t.Database)
		case p.t.Tier == catalog.TierShared && guc != p.t.ID:
			violate(guc, "shared-tier session carries tenant setting %q", guc)
		case p.t.Tier == catalog.TierSchema && user != p.t.SchemaName:
			violate("", "schema-tier session runs as role %q", user)
		}
	}
	res = p.conn.ExecParams(ctx, "SELECT token FROM "+p.table, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return vs, res.Err
	}
	own := false
	for _, row := range res.Rows {
		token := string(row[0])
		if token == p.token {
			own = true
			continue
		}
		for _, o := range all {
			if o != p && token == o.token {
				violate(o.t.Subdomain, "sees the canary row of tenant %s", o.t.Subdomain)
			}
		}
	}
	if !own {
		// Only this tenant's session wrote or deleted it, unless another
		// tenant's session reached it.
		violate("", "its own canary row is gone or invisible")
	}
	for _, o := range all {
		if o == p || o.t.Tier != catalog.TierSchema || o.t.Backend != p.t.Backend || o.t.Database != p.t.Database {
			continue
		}
		sql := "SELECT count(*) FROM " + o.table
		if r := p.conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read(); r.Err == nil {
			violate(o.t.Subdomain, "can read the canary table of tenant %s", o.t.Subdomain)
		} else if errors.Is(r.Err, context.Canceled) || errors.Is(r.Err, context.DeadlineExceeded) {
			return vs, r.Err
		}
	}
	return vs, nil
}
