package catalog

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/scram"
)

// The logins of a tenant that are people: what `tenant user` and the
// operator API manage. Service logins (kind 'service', EnsureServiceUser)
// are derived from a secret on every replica of their service, which would
// write them back: they are neither listed nor changed nor removed here.

// ValidateUsername reports why s cannot be a tenant login's name, or nil,
// for callers that take the name from elsewhere than a request body (the
// operator API's path).
func ValidateUsername(s string) error { return validateUsername(s) }

// ListUsers returns tenant tenantID's people logins by name, without their
// verifiers. An unknown tenant is an error wrapping ErrNotFound.
func (c *Catalog) ListUsers(ctx context.Context, tenantID string) ([]User, error) {
	if _, err := c.tenant(ctx, c.db, tenantID); err != nil {
		return nil, err
	}
	rows, err := c.db.Query(ctx, `SELECT tenant_id, username, role, created_at FROM tenant_users
		WHERE tenant_id = $1 AND kind = 'person' ORDER BY username`, tenantID)
	if err != nil {
		return nil, fmt.Errorf("catalog: users of tenant %q: %w", tenantID, err)
	}
	us, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (User, error) {
		var u User
		err := row.Scan(&u.TenantID, &u.Username, &u.Role, &u.CreatedAt)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: users of tenant %q: %w", tenantID, err)
	}
	return us, nil
}

// SetPassword replaces the password of a person's login. An empty password
// is generated and returned, to be shown once; only its SCRAM verifier is
// stored. The change reaches every process's cache through the catalog's
// notification, so new logins need the new password at once; sessions
// already open go on, as in PostgreSQL after ALTER ROLE … PASSWORD.
func (c *Catalog) SetPassword(ctx context.Context, tenantID, username, password string) (generated string, err error) {
	if err := validateUsername(username); err != nil {
		return "", err
	}
	if err := validatePassword(password); err != nil {
		return "", err
	}
	if password == "" {
		password = rand.Text()
		generated = password
	}
	verifier, err := scram.NewVerifier(password)
	if err != nil {
		return "", fmt.Errorf("catalog: %w", err)
	}
	tag, err := c.db.Exec(ctx, "UPDATE tenant_users SET verifier = $3 WHERE tenant_id = $1 AND username = $2 AND kind = 'person'",
		tenantID, username, verifier)
	if err != nil {
		return "", fmt.Errorf("catalog: password of user %q of tenant %q: %w", username, tenantID, err)
	}
	if tag.RowsAffected() == 0 {
		return "", c.whyNoPerson(ctx, tenantID, username, "change the password of")
	}
	c.log.Info("user password changed", zap.String("tenant", tenantID), zap.String("user", username))
	return generated, nil
}

// RemoveUser deletes a person's login. Every process watching removals
// (WatchRemovedUsers: the proxies) ends the login's open sessions.
func (c *Catalog) RemoveUser(ctx context.Context, tenantID, username string) error {
	if err := validateUsername(username); err != nil {
		return err
	}
	tag, err := c.db.Exec(ctx, "DELETE FROM tenant_users WHERE tenant_id = $1 AND username = $2 AND kind = 'person'", tenantID, username)
	if err != nil {
		return fmt.Errorf("catalog: remove user %q of tenant %q: %w", username, tenantID, err)
	}
	if tag.RowsAffected() == 0 {
		return c.whyNoPerson(ctx, tenantID, username, "remove")
	}
	c.log.Info("user removed", zap.String("tenant", tenantID), zap.String("user", username))
	return nil
}

// validatePassword refuses a chosen password that is too short; empty
// means "generate one".
func validatePassword(password string) error {
	if password != "" && len(password) < minPasswordLen {
		return &ValidationError{Field: "password", Value: "…", Reason: fmt.Sprintf("must be at least %d characters", minPasswordLen)}
	}
	return nil
}

// whyNoPerson explains why no person's login username of tenantID was
// found to op: no such tenant or user (ErrNotFound, ErrUserNotFound), or
// the login is a service's.
func (c *Catalog) whyNoPerson(ctx context.Context, tenantID, username, op string) error {
	if _, err := c.tenant(ctx, c.db, tenantID); err != nil {
		return err
	}
	var kind string
	err := c.db.QueryRow(ctx, "SELECT kind FROM tenant_users WHERE tenant_id = $1 AND username = $2", tenantID, username).Scan(&kind)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("catalog: user %q of tenant %q: %w", username, tenantID, ErrUserNotFound)
	case err != nil:
		return fmt.Errorf("catalog: user %q of tenant %q: %w", username, tenantID, err)
	}
	return &ValidationError{Field: "user", Value: username,
		Reason: fmt.Sprintf("is a service's login in tenant %s (its service sets it); cannot %s it", tenantID, op)}
}

// watchers are the functions a Watch method registered; each runs on
// the listener's goroutine.
type watchers[F any] struct {
	mu  sync.Mutex
	fns map[*F]struct{}
}

// add registers fn; the returned stop unregisters it and is idempotent.
func (w *watchers[F]) add(fn F) (stop func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fns == nil {
		w.fns = make(map[*F]struct{})
	}
	key := &fn
	w.fns[key] = struct{}{}
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.fns, key)
	}
}

func (w *watchers[F]) snapshot() []F {
	w.mu.Lock()
	defer w.mu.Unlock()
	fns := make([]F, 0, len(w.fns))
	for fn := range w.fns {
		fns = append(fns, *fn)
	}
	return fns
}

// WatchRemovedUsers calls fn(tenantID, username) when a login stops
// existing (RemoveUser, a tenant's deletion, or a row deleted by hand), as
// the catalog's notification reports it, so that a proxy can end the
// login's sessions. fn runs on the listener's goroutine and must return
// quickly. A removal made while the listener was reconnecting is not
// reported. stop unregisters fn; it is idempotent.
func (c *Catalog) WatchRemovedUsers(fn func(tenantID, username string)) (stop func()) {
	return c.removals.add(fn)
}

// removedCheckTimeout bounds the look-up that tells a removal from an
// insert or update, all of which the trigger notifies alike.
const removedCheckTimeout = 5 * time.Second

// reportRemoved tells the watchers of a "tenant_users:<tenant>/<user>"
// notification whose row no longer exists.
func (c *Catalog) reportRemoved(ctx context.Context, payload string) {
	key, ok := strings.CutPrefix(payload, "tenant_users:")
	if !ok {
		return
	}
	fns := c.removals.snapshot()
	if len(fns) == 0 {
		return
	}
	// Neither tenant ids nor user names contain '/'.
	tenantID, username, _ := strings.Cut(key, "/")
	ctx, cancel := context.WithTimeout(ctx, removedCheckTimeout)
	defer cancel()
	var exists bool
	err := c.db.QueryRow(ctx, "SELECT EXISTS (SELECT FROM tenant_users WHERE tenant_id = $1 AND username = $2)",
		tenantID, username).Scan(&exists)
	if err != nil {
		c.log.Warn("cannot tell whether a login was removed; its sessions go on",
			zap.String("tenant", tenantID), zap.String("user", username), zap.Error(err))
		return
	}
	if exists {
		return
	}
	for _, fn := range fns {
		fn(tenantID, username)
	}
}
