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
	// Limits are merged into the tenant's limit overrides (ParseLimit):
	// a value sets the override, nil removes it so the plan's applies.
	Limits map[string]*float64
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
	set, unset, err := limitChanges(req.Limits)
	if err != nil {
		return nil, fmt.Errorf("catalog: update %q: %w", subdomain, err)
	}
	t, err := c.scanTenant(c.db.QueryRow(ctx, `UPDATE tenants SET plan = coalesce($2, plan),
		max_users = coalesce($3, max_users), max_storage_gb = coalesce($4, max_storage_gb),
		features = features || $5::jsonb, limits = (limits || $6::jsonb) - $7::text[]
		WHERE subdomain = $1 RETURNING `+tenantColumns, subdomain, plan, maxUsers, maxStorage, string(features), set, unset))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("catalog: update %q: %w", subdomain, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: update %q: %w", subdomain, err)
	}
	c.log.Info("tenant updated", zap.String("tenant", subdomain), zap.String("plan", t.Plan), zap.ByteString("features", t.Features),
		zap.String("limits_set", set), zap.Strings("limits_removed", unset))
	return &t, nil
}

// SetPlanLimits merges limits into the plan's (a nil value removes the
// plan's own value, so the built-in default applies) and returns the
// plan's limits as every tenant without an override of its own now gets
// them. Every proxy drops its cached tenants at once.
func (c *Catalog) SetPlanLimits(ctx context.Context, plan string, limits map[string]*float64) (Limits, error) {
	if _, ok := plans[plan]; !ok {
		return Limits{}, &ValidationError{Field: "plan", Value: plan, Reason: "must be one of free, trial, standard, pro, enterprise"}
	}
	set, unset, err := limitChanges(limits)
	if err != nil {
		return Limits{}, fmt.Errorf("catalog: plan %q: %w", plan, err)
	}
	var merged []byte
	if err := c.db.QueryRow(ctx, `INSERT INTO plan_limits AS p (plan, limits) VALUES ($1, $2::jsonb - $3::text[])
		ON CONFLICT (plan) DO UPDATE SET limits = (p.limits || $2::jsonb) - $3::text[]
		RETURNING limits`, plan, set, unset).Scan(&merged); err != nil {
		return Limits{}, fmt.Errorf("catalog: plan %q: %w", plan, err)
	}
	c.log.Info("plan limits set", zap.String("plan", plan), zap.ByteString("limits", merged))
	return resolveLimits(plan, merged, nil), nil
}

// limitChanges splits ParseLimit's results into the JSON object of values
// to set and the names to remove.
func limitChanges(limits map[string]*float64) (set string, unset []string, err error) {
	values := map[string]float64{}
	unset = []string{}
	for name, v := range limits {
		if _, ok := limitKinds[name]; !ok {
			return "", nil, &ValidationError{Field: "limit", Value: name, Reason: "is not a limit: " + strings.Join(LimitNames(), ", ")}
		}
		if v == nil {
			unset = append(unset, name)
			continue
		}
		values[name] = *v
	}
	b, err := json.Marshal(values)
	return string(b), unset, err
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
