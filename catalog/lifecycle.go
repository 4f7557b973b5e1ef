package catalog

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/scram"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

// List returns every tenant, by subdomain, uncached.
func (c *Catalog) List(ctx context.Context) ([]Tenant, error) {
	rows, err := c.db.Query(ctx, "SELECT "+tenantColumns+" FROM tenants ORDER BY subdomain")
	if err != nil {
		return nil, fmt.Errorf("catalog: listing tenants: %w", err)
	}
	ts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Tenant, error) { return c.scanTenant(row) })
	if err != nil {
		return nil, fmt.Errorf("catalog: listing tenants: %w", err)
	}
	return ts, nil
}

// Show returns the tenant with that subdomain, read from the control
// database rather than the cache.
func (c *Catalog) Show(ctx context.Context, subdomain string) (*Tenant, error) {
	t, err := c.tenant(ctx, c.db, subdomain)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// Suspend stops an active tenant from reaching its data; Resume undoes it.
// Both are idempotent and refuse a tenant still being provisioned.
func (c *Catalog) Suspend(ctx context.Context, subdomain string) error {
	return c.setStatus(ctx, subdomain, StatusSuspended, "suspend")
}

// Resume makes a suspended tenant active again.
func (c *Catalog) Resume(ctx context.Context, subdomain string) error {
	return c.setStatus(ctx, subdomain, StatusActive, "resume")
}

func (c *Catalog) setStatus(ctx context.Context, subdomain string, to Status, op string) error {
	var from Status
	err := c.db.QueryRow(ctx, `UPDATE tenants t SET status = CASE WHEN t.status = 'provisioning' THEN t.status ELSE $2 END
		FROM tenants old WHERE t.id = old.id AND t.subdomain = $1 RETURNING old.status`, subdomain, string(to)).Scan(&from)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("catalog: %s %q: %w", op, subdomain, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("catalog: %s %q: %w", op, subdomain, err)
	}
	if from == StatusProvisioning {
		return &StateError{Tenant: subdomain, Status: from, Op: op}
	}
	c.log.Info("tenant status changed", zap.String("tenant", subdomain), zap.String("from", string(from)), zap.String("to", string(to)))
	return nil
}

// Delete removes the tenant's data (the schema and role, the database, or
// its rows in the shared tables), then its catalog rows. It accepts a tenant
// in any status, including one an interrupted create left provisioning.
func (c *Catalog) Delete(ctx context.Context, subdomain string) error {
	t, err := c.tenant(ctx, c.db, subdomain)
	if err != nil {
		return err
	}
	b, err := c.backend(ctx, c.db, t.Backend)
	if err != nil {
		return err
	}
	d := c.deletion(ctx, t)
	if err := c.teardown(ctx, t, b, &d); err != nil {
		return fmt.Errorf("catalog: delete %q: %w", subdomain, err)
	}
	c.log.Info("tenant deleted", zap.String("tenant", t.ID), zap.String("tier", string(t.Tier)))
	return nil
}

// teardown drops whatever of t exists on b, then t's catalog rows, with
// audit, when not nil, recorded in the same transaction. Every step
// tolerates the object being absent, so it finishes a half-provisioned
// tenant as well as a complete one.
func (c *Catalog) teardown(ctx context.Context, t Tenant, b Backend, audit *Deletion) error {
	if err := dropData(ctx, t, b); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, c.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM outbox WHERE tenant_id = $1", t.ID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM tenants WHERE id = $1", t.ID); err != nil { // tenant_users cascade
			return err
		}
		if audit == nil {
			return nil
		}
		return writeAudit(ctx, tx, AuditDelete, t.ID, audit)
	})
}

// dropData drops whatever of t's data exists on b: its schema and role,
// its database and login role, or its rows in the shared tables.
func dropData(ctx context.Context, t Tenant, b Backend) error {
	switch t.Tier {
	case TierSchema:
		return dropSchema(ctx, t, b)
	case TierDatabase:
		return dropDatabase(ctx, t, b)
	case TierShared:
		return deleteSharedRows(ctx, t, b)
	}
	return nil
}

// deleteInDependencyOrder deletes tenant's rows from every table: an app's
// foreign keys need not cascade, so a table whose rows others still
// reference (23503) is tried again, in its own savepoint, once the tables
// referencing it have been emptied; a pass that empties no table ends it
// with that error.
func deleteInDependencyOrder(ctx context.Context, tx pgx.Tx, tables []string, tenant string) error {
	for len(tables) > 0 {
		var left []string
		var blocked error
		for _, table := range tables {
			err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
				_, err := sp.Exec(ctx, "DELETE FROM "+pgx.Identifier{"public", table}.Sanitize()+" WHERE tenant_id = $1", tenant)
				return err
			})
			var pe *pgconn.PgError
			switch {
			case err == nil:
			case errors.As(err, &pe) && pe.Code == "23503":
				left, blocked = append(left, table), err
			default:
				return err
			}
		}
		if len(left) == len(tables) {
			return blocked
		}
		tables = left
	}
	return nil
}

func dropSchema(ctx context.Context, t Tenant, b Backend) error {
	conn, err := migrations.ConnectAs(ctx, b.AdminDSN, t.Database)
	if err != nil {
		return fmt.Errorf("connecting to backend %s: %w", b.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		return migrations.DropSchemaTenant(ctx, tx, t.SchemaName)
	})
}

func dropDatabase(ctx context.Context, t Tenant, b Backend) error {
	conn, err := migrations.ConnectAs(ctx, b.AdminDSN, "")
	if err != nil {
		return fmt.Errorf("connecting to backend %s: %w", b.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// FORCE ends the tenant's open sessions; the tenant is going away. Its
	// login role owns nothing outside the database, so it can go after it.
	if _, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{t.Database}.Sanitize()+" WITH (FORCE)"); err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{t.Database}.Sanitize())
	return err
}

// deleteSharedRows deletes t's rows from every table of the shared database
// that has a tenant_id column. Foreign keys cascade, so the order of the
// tables does not matter. The tenant GUC is set as well, so an admin role
// subject to the forced policies deletes the same rows a superuser does.
func deleteSharedRows(ctx context.Context, t Tenant, b Backend) error {
	conn, err := migrations.ConnectAs(ctx, b.AdminDSN, t.Database)
	if err != nil {
		return fmt.Errorf("connecting to backend %s: %w", b.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config($1, $2, true)", migrations.TenantGUC, t.ID); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT c.relname FROM pg_class c
			JOIN pg_namespace n ON n.oid = c.relnamespace
			JOIN pg_attribute a ON a.attrelid = c.oid
			WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attname = 'tenant_id' AND NOT a.attisdropped
			ORDER BY 1`)
		if err != nil {
			return err
		}
		tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if err := deleteInDependencyOrder(ctx, tx, tables, t.ID); err != nil {
			return err
		}
		// The tenant's id sequences go with its rows: a tenant created
		// later under the same id starts again at 1.
		_, err = tx.Exec(ctx, "SELECT "+tierddl.ForgetIDsFunction+"($1)", t.ID)
		return err
	})
}

// ListBackends returns every backend server, secrets included (the Backend
// type keeps them out of JSON).
func (c *Catalog) ListBackends(ctx context.Context) ([]Backend, error) {
	rows, err := c.db.Query(ctx, "SELECT "+backendColumns+" FROM backends ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("catalog: listing backends: %w", err)
	}
	bs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Backend, error) { return c.scanBackend(row) })
	if err != nil {
		return nil, fmt.Errorf("catalog: listing backends: %w", err)
	}
	return bs, nil
}

// AddBackendRequest is what `backend add` asks for.
type AddBackendRequest struct {
	Name string
	// DSN connects as the server's admin role (a superuser in practice).
	DSN    string
	Region string
	// Capacity bounds its database-tier tenants; zero means
	// migrations.DefaultCapacity.
	Capacity int
}

// AddBackend prepares another PostgreSQL server (serving role, shared and
// schema databases, shared migrations) and registers it. Re-adding an
// existing name updates its DSN, region and capacity and repairs the server.
func (c *Catalog) AddBackend(ctx context.Context, req AddBackendRequest) (*Backend, error) {
	if !subdomainPattern.MatchString(req.Name) {
		return nil, &ValidationError{Field: "backend name", Value: req.Name, Reason: "may contain only a-z, 0-9 and inner hyphens, at most 63"}
	}
	if req.Region == "" || !subdomainPattern.MatchString(req.Region) {
		return nil, &ValidationError{Field: "region", Value: req.Region, Reason: "may contain only a-z, 0-9 and inner hyphens, at most 63"}
	}
	if req.Capacity < 0 {
		return nil, &ValidationError{Field: "capacity", Value: fmt.Sprint(req.Capacity), Reason: "must not be negative"}
	}
	if _, err := pgconn.ParseConfig(req.DSN); err != nil {
		// The parse error may echo the DSN, password included.
		return nil, &ValidationError{Field: "DSN", Value: "…", Reason: "is not a valid PostgreSQL connection string"}
	}
	conn, err := c.db.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	defer conn.Release()
	if err := migrations.RegisterBackend(ctx, conn.Conn(), migrations.Backend{
		Name: req.Name, Region: req.Region, AdminDSN: req.DSN, Capacity: req.Capacity,
	}, c.keys); err != nil {
		return nil, err
	}
	b, err := c.backend(ctx, c.db, req.Name)
	if err != nil {
		return nil, err
	}
	c.log.Info("backend registered", zap.String("backend", b.Name), zap.String("region", b.Region))
	return &b, nil
}

// AddUser adds a login to tenant tenantID with role "admin" or "member"
// within the plan's max_users. An empty password is generated and returned,
// to be shown once; only its SCRAM verifier is stored.
func (c *Catalog) AddUser(ctx context.Context, tenantID, username, password, role string) (*User, string, error) {
	if err := validateUsername(username); err != nil {
		return nil, "", err
	}
	if role != "admin" && role != "member" {
		return nil, "", &ValidationError{Field: "role", Value: role, Reason: "must be admin or member"}
	}
	if err := validatePassword(password); err != nil {
		return nil, "", err
	}
	generated := ""
	if password == "" {
		password = rand.Text()
		generated = password
	}
	verifier, err := scram.NewVerifier(password)
	if err != nil {
		return nil, "", fmt.Errorf("catalog: %w", err)
	}
	u := User{TenantID: tenantID, Username: username, Verifier: verifier, Role: role}
	err = pgx.BeginFunc(ctx, c.db, func(tx pgx.Tx) error {
		// Locking the tenant row serializes concurrent AddUsers, so the
		// max_users check cannot be raced past.
		var maxUsers, users int
		err := tx.QueryRow(ctx, `SELECT max_users, (SELECT count(*) FROM tenant_users WHERE tenant_id = $1 AND kind = 'person')
			FROM tenants WHERE id = $1 FOR UPDATE`, tenantID).Scan(&maxUsers, &users)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("catalog: tenant %q: %w", tenantID, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if users >= maxUsers {
			return &LimitError{Tenant: tenantID, Limit: "max_users", Max: maxUsers,
				err: &ValidationError{Field: "user", Value: username, Reason: fmt.Sprintf("tenant %q already has its plan's %d users", tenantID, maxUsers)}}
		}
		_, err = tx.Exec(ctx, "INSERT INTO tenant_users (tenant_id, username, verifier, role) VALUES ($1, $2, $3, $4)",
			tenantID, username, verifier, role)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return &ValidationError{Field: "user", Value: username, Reason: "already exists in tenant " + tenantID}
		}
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return &u, generated, nil
}
