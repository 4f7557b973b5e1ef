package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Event is one outbox row: something to tell the outside world about a
// tenant, written in the transaction that made it true.
type Event struct {
	ID        int64           `json:"id"`
	TenantID  string          `json:"tenant_id"`
	Kind      string          `json:"kind"`
	Payload   json.RawMessage `json:"payload"`
	CreatedAt time.Time       `json:"created_at"`
}

// EventWelcome asks for the welcome email to a new tenant's admin user. Its
// payload never carries the password.
const EventWelcome = "welcome_email"

// Sender delivers outbox events (an email service, a queue). An event is
// marked sent only after Send returns nil, so a Sender may see an event
// again after a failure and should be idempotent on Event.ID.
type Sender interface {
	Send(ctx context.Context, e Event) error
}

// LogSender is the default Sender: it logs each event and delivers nothing.
type LogSender struct {
	Logger *zap.Logger
}

// Send logs e.
func (s LogSender) Send(_ context.Context, e Event) error {
	s.Logger.Info("outbox event", zap.String("tenant", e.TenantID), zap.String("kind", e.Kind),
		zap.Int64("event_id", e.ID), zap.ByteString("payload", e.Payload))
	return nil
}

// deliver hands tenantID's unsent events to the Sender and marks those it
// accepts. A failure leaves the event unsent for a later delivery and is
// returned.
func (c *Catalog) deliver(ctx context.Context, tenantID string) error {
	rows, err := c.db.Query(ctx, `SELECT id, tenant_id, kind, payload, created_at FROM outbox
		WHERE tenant_id = $1 AND sent_at IS NULL ORDER BY id`, tenantID)
	if err != nil {
		return fmt.Errorf("catalog: outbox: %w", err)
	}
	var events []Event
	for rows.Next() {
		var e Event
		if err := rows.Scan(&e.ID, &e.TenantID, &e.Kind, &e.Payload, &e.CreatedAt); err != nil {
			rows.Close()
			return fmt.Errorf("catalog: outbox: %w", err)
		}
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("catalog: outbox: %w", err)
	}
	for _, e := range events {
		if err := c.sender.Send(ctx, e); err != nil {
			return fmt.Errorf("catalog: outbox event %d: %w", e.ID, err)
		}
		if _, err := c.db.Exec(ctx, "UPDATE outbox SET sent_at = now() WHERE id = $1", e.ID); err != nil {
			return fmt.Errorf("catalog: outbox event %d: %w", e.ID, err)
		}
	}
	return nil
}
