package catalog

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/scram"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// CreateRequest is what `tenant create` asks for.
type CreateRequest struct {
	// Subdomain becomes the tenant id too; see ValidateSubdomain.
	Subdomain string
	// Name is the display name; empty means the subdomain.
	Name string
	// Plan is one of the Plan* constants; it implies the tier and limits.
	Plan string
	// Region picks the backends to place on; empty means "default".
	Region string
	// Tier overrides the plan's tier when not empty.
	Tier Tier
	// AdminUser is the tenant's first login; empty means "admin".
	AdminUser string
	// AdminPassword is AdminUser's password; empty means generate one.
	AdminPassword string
}

// Created is the outcome of Create.
type Created struct {
	Tenant    *Tenant
	AdminUser string
	// Password is the generated admin password, to be shown once; empty when
	// the request supplied one. Only its SCRAM verifier is stored.
	Password string
}

type plan struct {
	tier         Tier
	maxUsers     int
	maxStorageGB int
	features     map[string]bool
	// trialDays, when positive, sets subscription_expires_at.
	trialDays int
}

var plans = map[string]plan{
	PlanFree:  {tier: TierShared, maxUsers: 5, maxStorageGB: 1, features: map[string]bool{"file_uploads": false, "audit_log": false, "sso": false}},
	PlanTrial: {tier: TierShared, maxUsers: 10, maxStorageGB: 5, features: map[string]bool{"file_uploads": true, "audit_log": false, "sso": false}, trialDays: 14},
	PlanStandard: {tier: TierSchema, maxUsers: 50, maxStorageGB: 50,
		features: map[string]bool{"file_uploads": true, "audit_log": false, "sso": false}},
	PlanPro: {tier: TierSchema, maxUsers: 250, maxStorageGB: 250,
		features: map[string]bool{"file_uploads": true, "audit_log": true, "sso": false}},
	PlanEnterprise: {tier: TierDatabase, maxUsers: 10000, maxStorageGB: 2000,
		features: map[string]bool{"file_uploads": true, "audit_log": true, "sso": true}},
}

// Provisioning steps, in order; a test's failpoint names one to fail after.
const (
	stepCatalog  = "catalog"  // the tenant row exists, status provisioning
	stepObjects  = "objects"  // schema and role, or database, exist
	stepMigrate  = "migrate"  // tenant migrations applied
	stepActivate = "activate" // admin user and outbox event written, status active
)

// minPasswordLen is the shortest admin password Create accepts.
const minPasswordLen = 8

// normalize fills defaults and validates everything that can be checked
// without the database.
func (r *CreateRequest) normalize() (plan, error) {
	if err := ValidateSubdomain(r.Subdomain); err != nil {
		return plan{}, err
	}
	if r.Name = strings.TrimSpace(r.Name); r.Name == "" {
		r.Name = r.Subdomain
	}
	if len(r.Name) > 200 {
		return plan{}, &ValidationError{Field: "name", Value: r.Name, Reason: "is longer than 200 characters"}
	}
	p, ok := plans[r.Plan]
	if !ok {
		return plan{}, &ValidationError{Field: "plan", Value: r.Plan, Reason: "must be one of free, trial, standard, pro, enterprise"}
	}
	switch r.Tier {
	case "":
		r.Tier = p.tier
	case TierShared, TierSchema, TierDatabase:
	default:
		return plan{}, &ValidationError{Field: "isolation", Value: string(r.Tier), Reason: "must be shared, schema or database"}
	}
	if r.Region == "" {
		r.Region = migrations.DefaultRegion
	}
	if r.AdminUser == "" {
		r.AdminUser = "admin"
	}
	if err := validateUsername(r.AdminUser); err != nil {
		return plan{}, err
	}
	if r.AdminPassword != "" && len(r.AdminPassword) < minPasswordLen {
		return plan{}, &ValidationError{Field: "admin password", Value: "…",
			Reason: fmt.Sprintf("must be at least %d characters", minPasswordLen)}
	}
	return p, nil
}

// Create validates req, places the tenant on the least loaded backend of its
// region and provisions it: nothing for the shared tier, role and schema
// (owned by the role, reachable by nobody else) for the schema tier, its own
// database and a login role that owns it for the database tier; then the
// tenant migrations, the admin user
// and the welcome event, after which the tenant is active.
//
// Invalid input is a *ValidationError and creates nothing. A failure after
// the tenant row exists is rolled back: Create drops what it created and
// deletes the row, so the same command can simply be run again. Only a
// process killed midway leaves a tenant in status provisioning; Delete
// removes it.
func (c *Catalog) Create(ctx context.Context, req CreateRequest) (*Created, error) {
	p, err := req.normalize()
	if err != nil {
		return nil, err
	}
	password := req.AdminPassword
	generated := ""
	if password == "" {
		password = rand.Text()
		generated = password
	}
	verifier, err := scram.NewVerifier(password)
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}

	if t, err := c.tenant(ctx, c.db, req.Subdomain); err == nil {
		reason := "is already taken"
		if t.Status == StatusProvisioning {
			reason += " by a tenant being provisioned; if its create was interrupted, delete the tenant to clean up"
		}
		return nil, &ValidationError{Field: "subdomain", Value: req.Subdomain, Reason: reason}
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	b, err := c.place(ctx, req.Region, req.Tier, "")
	if err != nil {
		return nil, err
	}
	t, err := c.insertTenant(ctx, req, p, b)
	if err != nil {
		return nil, err
	}
	log := c.log.With(zap.String("tenant", t.ID), zap.String("tier", string(t.Tier)), zap.String("backend", b.Name))
	if err := c.provision(ctx, &t, b, req.AdminUser, verifier); err != nil {
		return nil, c.rollBack(ctx, t, b, "create", err)
	}
	log.Info("tenant created", zap.String("plan", t.Plan))
	if err := c.deliver(ctx, t.ID); err != nil {
		// The tenant exists; the event stays in the outbox for a later try.
		log.Warn("welcome event not delivered", zap.Error(err))
	}
	return &Created{Tenant: &t, AdminUser: req.AdminUser, Password: generated}, nil
}

// place picks the region's backend with the fewest tenants; database-tier
// tenants only go where fewer than Capacity database-tier tenants live.
// Concurrent creates may both take the last slot: capacity is a placement
// preference, not a hard quota. A move passes its source's backend as
// except, which is then not picked.
func (c *Catalog) place(ctx context.Context, region string, tier Tier, except string) (Backend, error) {
	b, err := c.scanBackend(c.db.QueryRow(ctx, `
		SELECT `+prefixed("b.", backendColumns)+` FROM backends b LEFT JOIN tenants t ON t.backend = b.name
		WHERE b.region = $1 AND b.name <> $3
		GROUP BY b.name
		HAVING $2 <> 'database' OR count(t.id) FILTER (WHERE t.isolation_level = 'database') < b.capacity
		ORDER BY count(t.id), b.name
		LIMIT 1`, region, string(tier), except))
	if errors.Is(err, pgx.ErrNoRows) {
		return b, &ValidationError{Field: "region", Value: region, Reason: "has no backend with room for a " + string(tier) + "-tier tenant"}
	}
	if err != nil {
		return b, fmt.Errorf("catalog: placing tenant: %w", err)
	}
	return b, nil
}

func prefixed(prefix, columns string) string {
	cols := strings.Split(columns, ", ")
	for i := range cols {
		cols[i] = prefix + cols[i]
	}
	return strings.Join(cols, ", ")
}

// nameAttempts bounds how often insertTenant draws a fresh object name after
// the catalog reported one taken; with 80 random bits a second draw is
// already a freak event.
const nameAttempts = 3

// errNameTaken reports that the tenant row's object name collided with
// another tenant's under the catalog's unique indexes.
var errNameTaken = errors.New("object name already taken")

// insertTenant writes the tenant row in status provisioning, under a fresh
// object name (NewObjectName), drawn again when another tenant holds it. The
// unique subdomain makes a concurrent create of the same subdomain fail here.
func (c *Catalog) insertTenant(ctx context.Context, req CreateRequest, p plan, b Backend) (Tenant, error) {
	for attempt := 1; ; attempt++ {
		t, err := c.insertTenantNamed(ctx, req, p, b, c.newName())
		if !errors.Is(err, errNameTaken) || attempt == nameAttempts {
			return t, err
		}
	}
}

func (c *Catalog) insertTenantNamed(ctx context.Context, req CreateRequest, p plan, b Backend, name string) (Tenant, error) {
	var database, databaseURL, schema any
	switch req.Tier {
	case TierShared:
		database = b.SharedDatabase
	case TierSchema:
		database, schema = b.SchemaDatabase, name
	case TierDatabase:
		database, databaseURL = name, databaseURLOf(b.AdminDSN, name)
	}
	features, err := json.Marshal(p.features)
	if err != nil {
		return Tenant{}, err
	}
	var expires *time.Time
	if p.trialDays > 0 {
		e := time.Now().Add(time.Duration(p.trialDays) * 24 * time.Hour).UTC().Truncate(time.Second)
		expires = &e
	}
	t, err := c.scanTenant(c.db.QueryRow(ctx, `INSERT INTO tenants
		(id, name, subdomain, isolation_level, plan, status, data_region, backend, database, database_url,
		 schema_name, max_users, max_storage_gb, features, settings, subscription_expires_at)
		VALUES ($1, $2, $1, $3, $4, 'provisioning', $5, $6, $7, $8, $9, $10, $11, $12, '{}', $13)
		RETURNING `+tenantColumns,
		req.Subdomain, req.Name, string(req.Tier), req.Plan, req.Region, b.Name, database, databaseURL,
		schema, p.maxUsers, p.maxStorageGB, features, expires))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		if pgErr.ConstraintName == "tenants_pkey" || pgErr.ConstraintName == "tenants_subdomain_key" {
			return t, &ValidationError{Field: "subdomain", Value: req.Subdomain, Reason: "is already taken"}
		}
		return t, fmt.Errorf("catalog: create %q: name %q (%s): %w", req.Subdomain, name, pgErr.ConstraintName, errNameTaken)
	}
	if err != nil {
		return t, fmt.Errorf("catalog: create %q: %w", req.Subdomain, err)
	}
	return t, nil
}

// databaseURLOf locates database on the server of adminDSN, without
// credentials.
func databaseURLOf(adminDSN, database string) string {
	cfg, err := pgconn.ParseConfig(adminDSN)
	if err != nil {
		return ""
	}
	u := url.URL{Scheme: "postgres", Path: "/" + database}
	if strings.HasPrefix(cfg.Host, "/") {
		u.RawQuery = url.Values{"host": {cfg.Host}, "port": {fmt.Sprint(cfg.Port)}}.Encode()
	} else {
		u.Host = net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
	}
	return u.String()
}

func (c *Catalog) fail(step string) error {
	if c.failpoint == nil {
		return nil
	}
	if err := c.failpoint(step); err != nil {
		return fmt.Errorf("step %s: %w", step, err)
	}
	return nil
}

// rollBack undoes op (create, import) of t after it failed with err, and
// says whether the undo worked too.
func (c *Catalog) rollBack(ctx context.Context, t Tenant, b Backend, op string, err error) error {
	// A context of its own: the caller's may be what failed.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if rerr := c.teardown(cctx, t, b, nil); rerr != nil {
		return fmt.Errorf("catalog: %s %q failed (%w) and its rollback failed too (%v); run tenant delete to clean up",
			op, t.ID, err, rerr)
	}
	return fmt.Errorf("catalog: %s %q (rolled back): %w", op, t.ID, err)
}

// provision runs every step after the tenant row and leaves t active.
func (c *Catalog) provision(ctx context.Context, t *Tenant, b Backend, adminUser, verifier string) error {
	if err := c.fail(stepCatalog); err != nil {
		return err
	}
	switch t.Tier {
	case TierSchema:
		if err := c.provisionSchema(ctx, *t, b); err != nil {
			return err
		}
	case TierDatabase:
		if err := c.provisionDatabase(ctx, t, b); err != nil {
			return err
		}
	default:
		// The shared tier's tables exist on every backend already; the steps
		// stay so that failure injection covers this tier too.
		if err := c.fail(stepObjects); err != nil {
			return err
		}
		if err := c.migrateShared(ctx, b); err != nil {
			return err
		}
	}
	payload, err := json.Marshal(map[string]string{
		"tenant": t.ID, "name": t.Name, "plan": t.Plan, "admin_user": adminUser,
	})
	if err != nil {
		return err
	}
	err = pgx.BeginFunc(ctx, c.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO tenant_users (tenant_id, username, verifier, role) VALUES ($1, $2, $3, 'admin')",
			t.ID, adminUser, verifier); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO outbox (tenant_id, kind, payload) VALUES ($1, $2, $3)",
			t.ID, EventWelcome, payload); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE tenants SET status = 'active' WHERE id = $1", t.ID); err != nil {
			return err
		}
		return c.fail(stepActivate)
	})
	if err != nil {
		return fmt.Errorf("activating: %w", err)
	}
	t.Status = StatusActive
	return nil
}

func (c *Catalog) provisionSchema(ctx context.Context, t Tenant, b Backend) error {
	conn, err := migrations.ConnectAs(ctx, b.AdminDSN, t.Database)
	if err != nil {
		return fmt.Errorf("connecting to backend %s: %w", b.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	role := pgx.Identifier{t.SchemaName}.Sanitize()
	// The role owns the schema and, through the migrations, everything in
	// it; PUBLIC gets nothing; the serving role may only SET ROLE to it,
	// being NOINHERIT.
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "CREATE ROLE "+role+" NOLOGIN NOINHERIT; "+
			"CREATE SCHEMA "+role+" AUTHORIZATION "+role+"; "+
			"REVOKE ALL ON SCHEMA "+role+" FROM PUBLIC; "+
			"GRANT "+role+" TO "+pgx.Identifier{b.ServingUser}.Sanitize())
		return err
	})
	if err != nil {
		return fmt.Errorf("creating schema %s: %w", t.SchemaName, err)
	}
	if err := c.fail(stepObjects); err != nil {
		return err
	}
	if err := migrations.ApplyTenant(ctx, c.db, conn, migrations.Target{
		Kind: migrations.KindSchema, Backend: b.Name, Database: t.Database, Schema: t.SchemaName, Tenant: t.ID,
	}); err != nil {
		return err
	}
	return c.fail(stepMigrate)
}

// provisionDatabase creates t's database and login role, whose password it
// records in the catalog and in t, and migrates the database as the role.
func (c *Catalog) provisionDatabase(ctx context.Context, t *Tenant, b Backend) error {
	password, err := migrations.TenantLoginPassword(ctx, c.db, c.keys, t.ID)
	if err != nil {
		return err
	}
	return c.buildDatabase(ctx, t, b, password)
}

// buildDatabase creates t's database on b, owned by t's login role with
// password, and migrates it as that role. A move calls it too, for a
// tenant whose row is not in the database tier yet.
func (c *Catalog) buildDatabase(ctx context.Context, t *Tenant, b Backend, password string) error {
	admin, err := migrations.ConnectAs(ctx, b.AdminDSN, "")
	if err != nil {
		return fmt.Errorf("connecting to backend %s: %w", b.Name, err)
	}
	err = migrations.CreateDatabase(ctx, admin, t.Database)
	admin.Close(context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	t.LoginPassword = password
	// The login role is made before the migrations so that they run as it
	// (the tenant owns what they create), never as the admin role in a
	// database whose schema the tenant owns.
	owner, err := migrations.ConnectAs(ctx, b.AdminDSN, t.Database)
	if err != nil {
		return fmt.Errorf("connecting to database %s: %w", t.Database, err)
	}
	defer owner.Close(context.WithoutCancel(ctx))
	if err := migrations.OwnDatabase(ctx, owner, t.LoginRole(), password); err != nil {
		return fmt.Errorf("database %s: %w", t.Database, err)
	}
	if err := c.fail(stepObjects); err != nil {
		return err
	}
	conn, err := migrations.ConnectLogin(ctx, b.AdminDSN, t.Database, t.LoginRole(), password)
	if err != nil {
		return fmt.Errorf("connecting to database %s as its login role: %w", t.Database, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := migrations.ApplyTenant(ctx, c.db, conn, migrations.Target{
		Kind: migrations.KindDatabase, Backend: b.Name, Database: t.Database, Tenant: t.ID,
	}); err != nil {
		return err
	}
	return c.fail(stepMigrate)
}

// migrateShared applies what the backend's shared database lacks of the
// stored migrations (a migrate up that failed there, or app versions stored
// since), so that a shared-tier tenant starts with the current schema too.
func (c *Catalog) migrateShared(ctx context.Context, b Backend) error {
	conn, err := migrations.ConnectAs(ctx, b.AdminDSN, b.SharedDatabase)
	if err != nil {
		return fmt.Errorf("connecting to backend %s: %w", b.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := migrations.ApplyTenant(ctx, c.db, conn, migrations.Target{
		Kind: migrations.KindShared, Backend: b.Name, Database: b.SharedDatabase,
	}); err != nil {
		return err
	}
	return c.fail(stepMigrate)
}
