package catalog

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/internal/scram"
)

// EnsureServiceUser makes username a "member" login of tenant tenantID
// whose password is password, for a service such as the chat API that
// reaches tenant data through the proxy. Such services derive the password
// from a secret on every replica, so this is called often: when the stored
// verifier already matches, nothing is written (and no cache invalidation
// is broadcast). A service login is not a person (kind 'service'), so it is
// not held to the plan's max_users, unlike AddUser, and it never takes over
// a person's login of the same name.
func (c *Catalog) EnsureServiceUser(ctx context.Context, tenantID, username, password string) error {
	if err := validateUsername(username); err != nil {
		return err
	}
	if len(password) < minPasswordLen {
		return &ValidationError{Field: "password", Value: "…", Reason: fmt.Sprintf("must be at least %d characters", minPasswordLen)}
	}
	var stored string
	err := c.db.QueryRow(ctx, "SELECT verifier FROM tenant_users WHERE tenant_id = $1 AND username = $2",
		tenantID, username).Scan(&stored)
	switch {
	case err == nil:
		if verifies(stored, password) {
			return nil
		}
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("catalog: service user %q of tenant %q: %w", username, tenantID, err)
	}
	verifier, err := scram.NewVerifier(password)
	if err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	tag, err := c.db.Exec(ctx, `INSERT INTO tenant_users (tenant_id, username, verifier, role, kind) VALUES ($1, $2, $3, 'member', 'service')
		ON CONFLICT (tenant_id, username) DO UPDATE SET verifier = EXCLUDED.verifier
		WHERE tenant_users.kind = 'service'`, tenantID, username, verifier)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23503" {
		return fmt.Errorf("catalog: tenant %q: %w", tenantID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("catalog: service user %q of tenant %q: %w", username, tenantID, err)
	}
	if tag.RowsAffected() == 0 {
		// The name belongs to a person: taking over their login would hand
		// their account to whoever holds the service secret.
		return &ValidationError{Field: "user", Value: username, Reason: "is a person's login in tenant " + tenantID + ", not a service's"}
	}
	return nil
}

// verifies reports whether password derives the stored verifier.
func verifies(stored, password string) bool {
	v, err := scram.ParseVerifier(stored)
	if err != nil {
		return false
	}
	got, err := scram.Derive(password, v.Salt, v.Iterations)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(got.StoredKey, v.StoredKey) == 1
}
