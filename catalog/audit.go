package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// AuditDelete is the audit_log action of `tenant delete`.
const AuditDelete = "delete"

// AuditEntry is one row of the audit log (control migration 0008).
type AuditEntry struct {
	ID     int64           `json:"id"`
	At     time.Time       `json:"at"`
	Action string          `json:"action"`
	Tenant string          `json:"tenant"`
	Detail json.RawMessage `json:"detail"`
}

// Deletion is the detail of a delete's audit entry: what went, counted
// rather than named, so the entry keeps no personal data of the tenant.
type Deletion struct {
	Tier    Tier   `json:"isolation_level"`
	Plan    string `json:"plan"`
	Status  Status `json:"status"`
	Backend string `json:"backend"`
	// Removed lists the objects dropped: database, schema, roles, or the
	// tenant's rows of the shared tables and its id sequences.
	Removed []string `json:"removed"`
	// Rows counts the rows of each table at deletion; absent when the
	// data could not be read (a tenant whose create was interrupted).
	Rows map[string]int64 `json:"rows,omitempty"`
	// Users counts its logins (people and services).
	Users     int       `json:"users"`
	CreatedAt time.Time `json:"tenant_created_at"`
}

// deletion describes what deleting t removes. Row counts are best effort:
// a half-provisioned tenant may have no database to count in, and that
// must not stop its deletion.
func (c *Catalog) deletion(ctx context.Context, t Tenant) Deletion {
	d := Deletion{Tier: t.Tier, Plan: t.Plan, Status: t.Status, Backend: t.Backend, CreatedAt: t.CreatedAt}
	switch t.Tier {
	case TierSchema:
		d.Removed = []string{"schema " + t.SchemaName, "role " + t.SchemaName}
	case TierDatabase:
		d.Removed = []string{"database " + t.Database, "login role " + t.Database}
	default:
		d.Removed = []string{"its rows of every table of database " + t.Database, "its id sequences"}
	}
	d.Removed = append(d.Removed, "catalog rows (tenant, users, outbox); every proxy drops its cached entry on the catalog's notification")
	if err := c.db.QueryRow(ctx, "SELECT count(*) FROM tenant_users WHERE tenant_id = $1", t.ID).Scan(&d.Users); err != nil {
		c.log.Warn("counting a deleted tenant's users", zap.String("tenant", t.ID), zap.Error(err))
	}
	rows, err := c.countRows(ctx, t)
	if err != nil {
		c.log.Warn("counting a deleted tenant's rows", zap.String("tenant", t.ID), zap.Error(err))
	}
	d.Rows = rows
	return d
}

func (c *Catalog) countRows(ctx context.Context, t Tenant) (map[string]int64, error) {
	conn, place, err := c.openData(ctx, t)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	counts := map[string]int64{}
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		ts, err := place.tables(ctx, tx)
		if err != nil {
			return err
		}
		for _, tb := range ts {
			var n int64
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM ("+place.selectRows(tb)+") r").Scan(&n); err != nil {
				return err
			}
			counts[tb.Name] = n
		}
		return nil
	})
	return counts, err
}

// writeAudit records an entry in tx, the transaction that deletes the
// tenant's catalog rows, so that a deletion is never without its entry.
func writeAudit(ctx context.Context, tx pgx.Tx, action, tenant string, detail any) error {
	d, err := json.Marshal(detail)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "INSERT INTO audit_log (action, tenant_id, detail) VALUES ($1, $2, $3)", action, tenant, d)
	return err
}

// Audit lists the audit log, oldest first; tenant, when not empty, keeps
// only its entries.
func (c *Catalog) Audit(ctx context.Context, tenant string) ([]AuditEntry, error) {
	rows, err := c.db.Query(ctx, `SELECT id, at, action, tenant_id, detail FROM audit_log
		WHERE $1 = '' OR tenant_id = $1 ORDER BY at, id`, tenant)
	if err != nil {
		return nil, fmt.Errorf("catalog: reading the audit log: %w", err)
	}
	es, err := pgx.CollectRows(rows, pgx.RowToStructByPos[AuditEntry])
	if err != nil {
		return nil, fmt.Errorf("catalog: reading the audit log: %w", err)
	}
	return es, nil
}
