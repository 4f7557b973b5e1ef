package catalog

import (
	"context"
	"fmt"
	"time"
)

// UsageRecord is a tenant's usage in one hour: one proxy instance's
// counts when recorded (RecordUsage), every instance's summed when read
// (Usage).
type UsageRecord struct {
	Tenant          string    `json:"tenant"`
	Hour            time.Time `json:"hour"`
	Transactions    int64     `json:"transactions"`
	Statements      int64     `json:"statements"`
	ServerTimeMS    float64   `json:"server_time_ms"`
	BytesIn         int64     `json:"bytes_in"`
	BytesOut        int64     `json:"bytes_out"`
	PeakConnections int       `json:"peak_connections"`
	// StorageMB is nil until storage is measured.
	StorageMB *int64 `json:"storage_mb"`
}

// RecordUsage adds the records (each at its Hour, truncated to the hour)
// to instance's rows, in one statement: all of them count or none does,
// so a caller that fails may send the same deltas again later.
func (c *Catalog) RecordUsage(ctx context.Context, instance string, recs []UsageRecord) error {
	if len(recs) == 0 {
		return nil
	}
	n := len(recs)
	tenants, hours := make([]string, n), make([]time.Time, n)
	xacts, stmts, micros, in, out := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	peaks := make([]int32, n)
	for i, r := range recs {
		tenants[i], hours[i] = r.Tenant, r.Hour.UTC().Truncate(time.Hour)
		xacts[i], stmts[i], micros[i] = r.Transactions, r.Statements, int64(r.ServerTimeMS*1000)
		in[i], out[i], peaks[i] = r.BytesIn, r.BytesOut, int32(r.PeakConnections)
	}
	_, err := c.db.Exec(ctx, `INSERT INTO usage_hourly AS u (tenant_id, hour, instance, transactions, statements,
			server_time_us, bytes_in, bytes_out, peak_connections)
		SELECT t, h, $1, x, s, m, i, o, p
		FROM unnest($2::text[], $3::timestamptz[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::int[])
			AS r (t, h, x, s, m, i, o, p)
		ON CONFLICT (tenant_id, hour, instance) DO UPDATE SET
			transactions = u.transactions + excluded.transactions, statements = u.statements + excluded.statements,
			server_time_us = u.server_time_us + excluded.server_time_us, bytes_in = u.bytes_in + excluded.bytes_in,
			bytes_out = u.bytes_out + excluded.bytes_out, peak_connections = greatest(u.peak_connections, excluded.peak_connections)`,
		instance, tenants, hours, xacts, stmts, micros, in, out, peaks)
	if err != nil {
		return fmt.Errorf("catalog: record usage: %w", err)
	}
	return nil
}

// Usage returns tenant's hourly usage since since (every tenant's when
// tenant is empty), oldest first, the instances of an hour summed: their
// peaks too, which bounds the tenant's peak from above.
func (c *Catalog) Usage(ctx context.Context, tenant string, since time.Time) ([]UsageRecord, error) {
	rows, err := c.db.Query(ctx, `SELECT tenant_id, hour, sum(transactions)::bigint, sum(statements)::bigint,
			sum(server_time_us)::float8 / 1000, sum(bytes_in)::bigint, sum(bytes_out)::bigint,
			sum(peak_connections)::int, max(storage_mb)
		FROM usage_hourly WHERE ($1 = '' OR tenant_id = $1) AND hour >= date_trunc('hour', $2::timestamptz)
		GROUP BY tenant_id, hour ORDER BY hour, tenant_id`, tenant, since)
	if err != nil {
		return nil, fmt.Errorf("catalog: usage: %w", err)
	}
	defer rows.Close()
	var out []UsageRecord
	for rows.Next() {
		var r UsageRecord
		if err := rows.Scan(&r.Tenant, &r.Hour, &r.Transactions, &r.Statements, &r.ServerTimeMS,
			&r.BytesIn, &r.BytesOut, &r.PeakConnections, &r.StorageMB); err != nil {
			return nil, fmt.Errorf("catalog: usage: %w", err)
		}
		r.Hour = r.Hour.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog: usage: %w", err)
	}
	return out, nil
}
