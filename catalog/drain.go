package catalog

import (
	"context"
	"fmt"
	"io"
)

// PlanTier is the tier plan implies, false for an unknown plan.
func PlanTier(plan string) (Tier, bool) {
	p, ok := plans[plan]
	return p.tier, ok
}

// BackendLoad is a backend with the tenants it holds and its room.
type BackendLoad struct {
	Backend
	// Tenants counts its tenants per tier.
	Tenants map[Tier]int `json:"tenants"`
	// Free is how many more database-tier tenants placement puts here.
	Free int `json:"free"`
}

// BackendLoads lists every backend with its tenants per tier and free
// capacity, by region and name.
func (c *Catalog) BackendLoads(ctx context.Context) ([]BackendLoad, error) {
	bs, err := c.ListBackends(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := c.db.Query(ctx, "SELECT backend, isolation_level, count(*) FROM tenants GROUP BY 1, 2")
	if err != nil {
		return nil, fmt.Errorf("catalog: counting tenants: %w", err)
	}
	counts := map[string]map[Tier]int{}
	var backend string
	var tier Tier
	var n int
	for rows.Next() {
		if err := rows.Scan(&backend, &tier, &n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("catalog: counting tenants: %w", err)
		}
		if counts[backend] == nil {
			counts[backend] = map[Tier]int{}
		}
		counts[backend][tier] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog: counting tenants: %w", err)
	}
	out := make([]BackendLoad, len(bs))
	for i, b := range bs {
		t := counts[b.Name]
		if t == nil {
			t = map[Tier]int{}
		}
		out[i] = BackendLoad{Backend: b, Tenants: t, Free: max(b.Capacity-t[TierDatabase], 0)}
	}
	return out, nil
}

// Drain moves every tenant off backend name, each to the least loaded
// other backend of its region in its tier, one after another, with a line
// per tenant to progress. It stops at the first move that fails (that
// tenant stays where it was; run it again to go on). New tenants may still
// be placed on the backend meanwhile.
func (c *Catalog) Drain(ctx context.Context, name string, progress io.Writer) ([]*Moved, error) {
	if _, err := c.backend(ctx, c.db, name); err != nil {
		return nil, err
	}
	rows, err := c.db.Query(ctx, "SELECT subdomain FROM tenants WHERE backend = $1 AND status <> 'provisioning' ORDER BY subdomain", name)
	if err != nil {
		return nil, fmt.Errorf("catalog: drain %s: %w", name, err)
	}
	var subs []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return nil, err
		}
		subs = append(subs, s)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var moved []*Moved
	for i, sub := range subs {
		m, err := c.Move(ctx, MoveRequest{Subdomain: sub})
		if err != nil {
			return moved, fmt.Errorf("catalog: drain %s: tenant %d of %d: %w", name, i+1, len(subs), err)
		}
		moved = append(moved, m)
		if progress != nil {
			fmt.Fprintf(progress, "%d/%d %s: %s -> %s, held %s\n", i+1, len(subs), sub, m.From, m.To, m.Hold)
		}
	}
	return moved, nil
}
