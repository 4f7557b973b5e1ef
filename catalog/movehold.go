package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// The switch of a move holds the tenant's new transactions on every proxy
// instance (README "Moving tenants"). Instances say they are alive in
// proxy_instances (Heartbeat), read the holds the movers ask for (Holds,
// woken by WatchMoves) and acknowledge each once the tenant has no
// transaction in flight there (AckHold); the mover switches only when
// every live instance has.
const (
	// instanceTTL is how long an instance counts as live after its last
	// heartbeat; proxies beat every second.
	instanceTTL = 5 * time.Second
	// holdExpiry ends a hold whose mover has not moved on for this long
	// (it died): proxies release the tenant. The source's fence still
	// refuses its writes until the same move is run again.
	holdExpiry = 30 * time.Second
	// ackTimeout bounds the mover's wait for the instances' holds.
	ackTimeout = 10 * time.Second
)

// Hold is a move's request to hold a tenant's new transactions; Seq
// numbers the move's attempts, so that an acknowledgement of an earlier one
// does not count.
type Hold struct {
	Tenant string
	Move   int64
	Seq    int
	// From is where the tenant was when the hold was asked for.
	From Place
}

// Heartbeat records that proxy instance is alive.
func (c *Catalog) Heartbeat(ctx context.Context, instance string) error {
	_, err := c.db.Exec(ctx, `INSERT INTO proxy_instances (id) VALUES ($1)
		ON CONFLICT (id) DO UPDATE SET seen_at = now()`, instance)
	if err != nil {
		return fmt.Errorf("catalog: heartbeat: %w", err)
	}
	return nil
}

// LeaveInstance removes instance, which is shutting down: moves stop
// waiting for it.
func (c *Catalog) LeaveInstance(ctx context.Context, instance string) error {
	if _, err := c.db.Exec(ctx, "DELETE FROM proxy_instances WHERE id = $1", instance); err != nil {
		return fmt.Errorf("catalog: leaving: %w", err)
	}
	return nil
}

// Holds lists the tenants whose moves hold them now.
func (c *Catalog) Holds(ctx context.Context) ([]Hold, error) {
	rows, err := c.db.Query(ctx, `SELECT tenant_id, id, hold_seq, source FROM tenant_moves
		WHERE step = $1 AND updated_at > now() - $2::interval`, MoveHolding, holdExpiry.String())
	if err != nil {
		return nil, fmt.Errorf("catalog: holds: %w", err)
	}
	defer rows.Close()
	var hs []Hold
	for rows.Next() {
		var h Hold
		var from []byte
		if err := rows.Scan(&h.Tenant, &h.Move, &h.Seq, &from); err != nil {
			return nil, fmt.Errorf("catalog: holds: %w", err)
		}
		if err := json.Unmarshal(from, &h.From); err != nil {
			return nil, fmt.Errorf("catalog: holds: %w", err)
		}
		hs = append(hs, h)
	}
	return hs, rows.Err()
}

// AckHold records that instance holds h's tenant with nothing in flight.
func (c *Catalog) AckHold(ctx context.Context, instance string, h Hold) error {
	_, err := c.db.Exec(ctx, `INSERT INTO move_acks (move_id, instance, hold_seq) VALUES ($1, $2, $3)
		ON CONFLICT (move_id, instance) DO UPDATE SET hold_seq = EXCLUDED.hold_seq, acked_at = now()`, h.Move, instance, h.Seq)
	if err != nil {
		return fmt.Errorf("catalog: acknowledging the hold of %s: %w", h.Tenant, err)
	}
	return nil
}

// WatchMoves calls fn(tenant) whenever a move of tenant changes step, as
// the catalog's notification reports it, so that a proxy reads the holds
// at once rather than at its next poll. fn runs on the listener's
// goroutine and must return quickly.
func (c *Catalog) WatchMoves(fn func(tenant string)) (stop func()) { return c.moves.add(fn) }

func (c *Catalog) reportMove(payload string) {
	tenant, ok := strings.CutPrefix(payload, "tenant_moves:")
	if !ok {
		return
	}
	for _, fn := range c.moves.snapshot() {
		fn(tenant)
	}
}

// Forget drops the cached tenant, so that the next look-up reads the
// catalog: a proxy releasing a moved tenant must route by the switched
// row, which its notification may not have reached yet.
func (c *Catalog) Forget(subdomain string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.tenants.Remove(subdomain)
}

// awaitAcks waits until every live instance has acknowledged hold seq of
// move id, or ackTimeout passes (an error naming those that did not).
func (c *Catalog) awaitAcks(ctx context.Context, id int64, seq int) error {
	deadline := time.Now().Add(ackTimeout)
	for {
		rows, err := c.db.Query(ctx, `SELECT i.id FROM proxy_instances i
			WHERE i.seen_at > now() - $2::interval
			  AND NOT EXISTS (SELECT FROM move_acks a WHERE a.move_id = $1 AND a.instance = i.id AND a.hold_seq = $3)
			ORDER BY 1`, id, instanceTTL.String(), seq)
		if err != nil {
			return fmt.Errorf("waiting for the proxies' holds: %w", err)
		}
		var missing []string
		var name string
		for rows.Next() {
			if err := rows.Scan(&name); err != nil {
				rows.Close()
				return err
			}
			missing = append(missing, name)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("proxy instances %s did not hold the tenant within %s (a transaction or session of the tenant stayed open)",
				strings.Join(missing, ", "), ackTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
