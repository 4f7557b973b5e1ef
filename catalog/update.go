package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// UpdateRequest changes a tenant's plan and feature flags.
type UpdateRequest struct {
	// Plan, when not empty, is the new plan: the plan column and the
	// limits Create derives from it (max_users, max_storage_gb). It never
	// moves the tenant to another tier, even when the plan implies one.
	Plan string
	// Features are merged into the tenant's features: named flags are set,
	// the others kept.
	Features map[string]any
}

// Update applies req to the tenant with that subdomain, in any status,
// and returns the tenant as it is now. The catalog's trigger notifies
// every proxy, whose next look-up of the tenant reads the change.
func (c *Catalog) Update(ctx context.Context, subdomain string, req UpdateRequest) (*Tenant, error) {
	var plan, maxUsers, maxStorage any // NULL keeps the column
	if req.Plan != "" {
		p, ok := plans[req.Plan]
		if !ok {
			return nil, &ValidationError{Field: "plan", Value: req.Plan, Reason: "must be one of free, trial, standard, pro, enterprise"}
		}
		plan, maxUsers, maxStorage = req.Plan, p.maxUsers, p.maxStorageGB
	}
	for name := range req.Features {
		if strings.TrimSpace(name) == "" {
			return nil, &ValidationError{Field: "feature", Value: name, Reason: "needs a name"}
		}
	}
	features, err := json.Marshal(req.Features)
	if err != nil {
		return nil, fmt.Errorf("catalog: update %q: %w", subdomain, err)
	}
	if req.Features == nil {
		features = []byte("{}")
	}
	t, err := c.scanTenant(c.db.QueryRow(ctx, `UPDATE tenants SET plan = coalesce($2, plan),
		max_users = coalesce($3, max_users), max_storage_gb = coalesce($4, max_storage_gb),
		features = features || $5::jsonb
		WHERE subdomain = $1 RETURNING `+tenantColumns, subdomain, plan, maxUsers, maxStorage, string(features)))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("catalog: update %q: %w", subdomain, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: update %q: %w", subdomain, err)
	}
	c.log.Info("tenant updated", zap.String("tenant", subdomain), zap.String("plan", t.Plan), zap.ByteString("features", t.Features))
	return &t, nil
}

// ParseFeature reads a flag given as name=value: true and false are
// booleans, a JSON number is a number, anything else a string (quote a
// value such as "true" to keep it a string: "\"true\"" is the string true).
func ParseFeature(s string) (name string, value any, err error) {
	name, v, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return "", nil, &ValidationError{Field: "feature", Value: s, Reason: "must be name=value"}
	}
	switch v {
	case "true", "false":
		return name, v == "true", nil
	}
	if unq, err := strconv.Unquote(v); err == nil && strings.HasPrefix(v, `"`) {
		return name, unq, nil
	}
	var n json.Number
	if err := json.Unmarshal([]byte(v), &n); err == nil && v == strings.TrimSpace(v) {
		return name, n, nil
	}
	return name, v, nil
}
