package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog/secrets"
	"github.com/tenantproxy/tenantproxy/migrations"
)

// errNoSecretsKey is RotateSecrets' error when Options.Secrets is nil.
var errNoSecretsKey = errors.New("catalog: rotating secrets needs a secrets key (--secrets-key-file or TENANTPROXY_SECRETS_KEY)")

// RotateSecrets seals every backend's admin DSN and serving password, and
// every database-tier tenant's login password, with the current key of
// Options.Secrets, in one transaction: values in plain
// text (written before encryption was configured) and values sealed with a
// previous key alike. It returns the backends it resealed. A value no
// configured key opens fails the whole rotation with an error naming its
// backend, and nothing changes. The rows' triggers invalidate every
// process's cached copy.
func (c *Catalog) RotateSecrets(ctx context.Context) ([]string, error) {
	if c.keys == nil {
		return nil, errNoSecretsKey
	}
	var names []string
	err := pgx.BeginFunc(ctx, c.db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, "SELECT name, admin_dsn, serving_password FROM backends ORDER BY name FOR UPDATE")
		if err != nil {
			return err
		}
		type sealed struct{ name, dsn, password string }
		var todo []sealed
		var name, dsn, password string
		_, err = pgx.ForEachRow(rows, []any{&name, &dsn, &password}, func() error {
			plainDSN, err := c.keys.OpenBackend(name, "admin DSN", dsn)
			if err != nil {
				return err
			}
			plainPassword, err := c.keys.OpenBackend(name, "serving password", password)
			if err != nil {
				return err
			}
			todo = append(todo, sealed{name, c.keys.Seal(plainDSN), c.keys.Seal(plainPassword)})
			return nil
		})
		if err != nil {
			return err
		}
		for _, s := range todo {
			if _, err := tx.Exec(ctx, "UPDATE backends SET admin_dsn = $2, serving_password = $3 WHERE name = $1",
				s.name, s.dsn, s.password); err != nil {
				return fmt.Errorf("backend %s: %w", s.name, err)
			}
			names = append(names, s.name)
		}
		return c.resealLogins(ctx, tx)
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: rotating secrets: %w", err)
	}
	c.log.Info("catalog secrets resealed", zap.Int("backends", len(names)), zap.String("key", c.keys.Current()))
	return names, nil
}

// resealLogins seals every tenant's login password with the current key.
func (c *Catalog) resealLogins(ctx context.Context, tx pgx.Tx) error {
	rows, err := tx.Query(ctx, "SELECT id, login_password FROM tenants WHERE login_password IS NOT NULL ORDER BY id FOR UPDATE")
	if err != nil {
		return err
	}
	resealed := map[string]string{}
	var id, stored string
	_, err = pgx.ForEachRow(rows, []any{&id, &stored}, func() error {
		plain, err := migrations.OpenTenantLogin(c.keys, id, stored)
		resealed[id] = c.keys.Seal(plain)
		return err
	})
	if err != nil {
		return err
	}
	for id, sealed := range resealed {
		if _, err := tx.Exec(ctx, "UPDATE tenants SET login_password = $2 WHERE id = $1", id, sealed); err != nil {
			return fmt.Errorf("tenant %s: %w", id, err)
		}
	}
	return nil
}

// UnsealedBackends names the backends whose admin DSN or serving password
// is still plain text, so that serve can say so at startup.
func (c *Catalog) UnsealedBackends(ctx context.Context) ([]string, error) {
	rows, err := c.db.Query(ctx, "SELECT name, admin_dsn, serving_password FROM backends ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("catalog: listing backends: %w", err)
	}
	var names []string
	var name, dsn, password string
	_, err = pgx.ForEachRow(rows, []any{&name, &dsn, &password}, func() error {
		if !secrets.Sealed(dsn) || !secrets.Sealed(password) {
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: listing backends: %w", err)
	}
	return names, nil
}
