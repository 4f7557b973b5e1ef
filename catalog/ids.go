package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

// continueIDs moves the id sequences of tb's columns past the highest id
// that was copied in, so that the tenant's next INSERT gets a fresh id, not
// a duplicate key: the column's own identity or serial sequence in the
// schema and database tiers, the tenant's per-tenant sequence
// (tierddl.NextIDFunction) in the shared tier, else the column's own there
// too (the chat model's, which every tenant of the database shares: it is
// never set back, so that another tenant's next id stays fresh).
func (p dataPlace) continueIDs(ctx context.Context, tx pgx.Tx, tb Table) error {
	for _, col := range tb.Columns {
		seq, err := p.idSequence(ctx, tx, tb, col.Name)
		if err != nil {
			return fmt.Errorf("id sequence of %s.%s: %w", tb.Name, col.Name, err)
		}
		if seq == "" {
			continue
		}
		// is_called false below 1: the next id is then 1, a sequence's floor.
		_, err = tx.Exec(ctx, "SELECT setval($1::regclass, greatest(m, 1), m >= 1) FROM (SELECT greatest(max(r.c), pg_sequence_last_value($1::regclass)) AS m FROM (SELECT "+
			pgx.Identifier{col.Name}.Sanitize()+" AS c FROM ("+p.selectRows(tb)+") s) r HAVING max(r.c) IS NOT NULL) l", seq)
		if err != nil {
			return fmt.Errorf("continuing the ids of %s.%s: %w", tb.Name, col.Name, err)
		}
	}
	return nil
}

// idSequence names the sequence that numbers column of tb, creating the
// tenant's own in the shared tier; "" when none does.
func (p dataPlace) idSequence(ctx context.Context, tx pgx.Tx, tb Table, column string) (string, error) {
	var seq *string
	own := func() (string, error) {
		err := tx.QueryRow(ctx, "SELECT pg_get_serial_sequence($1, $2)", p.qualified(tb.Name), column).Scan(&seq)
		if err != nil || seq == nil {
			return "", err
		}
		return *seq, nil
	}
	if p.tenant == "" {
		return own()
	}
	// The key is in the column's default, next_id('key'): it stays the
	// table and column as created, whatever they are called now.
	err := tx.QueryRow(ctx, `SELECT format('%I.%I', $3::text, `+tierddl.ProxySchema+`.id_sequence($4, k.key))
		FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
		CROSS JOIN LATERAL substring(pg_get_expr(d.adbin, d.adrelid) FROM $5) AS k(key)
		WHERE d.adrelid = $1::regclass AND a.attname = $2 AND k.key IS NOT NULL`,
		p.qualified(tb.Name), column, tierddl.SequenceSchema, p.tenant, `next_id\('([^']+)'`).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return own()
	}
	if err != nil {
		return "", err
	}
	_, err = tx.Exec(ctx, "CREATE SEQUENCE IF NOT EXISTS "+*seq)
	return *seq, err
}
