package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/migrations"
)

// storageLockKey is the control database's advisory lock held while one
// instance measures storage ("tpstorag"), so that with several proxy
// instances only one of them scans the backends each interval.
const storageLockKey int64 = 0x747073746f726167

// StorageInstance is the usage_hourly instance under which measured
// storage is recorded: one figure per tenant and hour (the hour's
// highest), whichever proxy instance measured it.
const StorageInstance = "storage"

// QuotaLevel is where a tenant's measured storage stands against its
// storage_mb.
type QuotaLevel int

// Quota levels, in order.
const (
	QuotaUnder   QuotaLevel = iota // below 80%, or no limit, or not measured
	QuotaWarning                   // at or above 80%
	QuotaOver                      // above 100%: the tenant is read-only
)

// quotaWarnPercent is where QuotaWarning starts.
const quotaWarnPercent = 80

// StorageQuota returns the level of used bytes against a limit of
// limitMB megabytes (0: none). Only more than the limit is over it: a
// tenant exactly at its quota may still delete and write back what it
// deleted.
func StorageQuota(used *int64, limitMB int64) QuotaLevel {
	if used == nil || limitMB <= 0 {
		return QuotaUnder
	}
	limit := limitMB << 20
	switch {
	case *used > limit:
		return QuotaOver
	case *used*100 >= limit*quotaWarnPercent:
		return QuotaWarning
	}
	return QuotaUnder
}

// MeasureStorage measures every active tenant's storage, stores it in the
// catalog (tenants.storage_bytes, which reaches every proxy instance with
// the tenant's limits) and records it as the hour's usage. It does
// nothing, and reports false, when another instance is measuring or
// measured less than fresh ago: the instances share one schedule.
//
// Per tier: the database tier is pg_database_size of the tenant's
// database; the schema tier the total size (heap, indexes, TOAST) of the
// tables and materialized views in the tenant's schema; the shared tier
// an estimate (sharedShares).
func (c *Catalog) MeasureStorage(ctx context.Context, fresh time.Duration) (bool, error) {
	conn, err := c.db.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("catalog: measure storage: %w", err)
	}
	defer conn.Release()
	var locked, recent bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", storageLockKey).Scan(&locked); err != nil || !locked {
		return false, err
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", storageLockKey) //nolint:errcheck // the session's end releases it too
	err = conn.QueryRow(ctx, "SELECT coalesce(max(storage_measured_at) > now() - make_interval(secs => $1), false) FROM tenants",
		fresh.Seconds()).Scan(&recent)
	if err != nil || recent {
		return false, err
	}
	sizes, err := c.measure(ctx)
	if len(sizes) == 0 {
		return false, err
	}
	return true, errors.Join(err, c.storeStorage(ctx, sizes, time.Now().UTC().Truncate(time.Hour)))
}

// measured is one tenant to measure, and then its size.
type measured struct {
	id, subdomain, database, schema string
	tier                            Tier
	bytes                           int64
}

// measure measures every active tenant, backend by backend. The tenants
// of a backend that cannot be measured are left out, keeping their last
// figures rather than get none, and its error is returned with the rest.
func (c *Catalog) measure(ctx context.Context) ([]*measured, error) {
	byBackend := map[string][]*measured{}
	var backend string
	rows, err := c.db.Query(ctx, `SELECT id, subdomain, isolation_level, backend, database, coalesce(schema_name, '')
		FROM tenants WHERE status = 'active'`)
	if err != nil {
		return nil, fmt.Errorf("catalog: measure storage: %w", err)
	}
	for rows.Next() {
		m := &measured{}
		if err := rows.Scan(&m.id, &m.subdomain, &m.tier, &backend, &m.database, &m.schema); err != nil {
			rows.Close()
			return nil, fmt.Errorf("catalog: measure storage: %w", err)
		}
		byBackend[backend] = append(byBackend[backend], m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog: measure storage: %w", err)
	}
	var all []*measured
	var errs []error
	for name, ts := range byBackend {
		b, err := c.backend(ctx, c.db, name)
		if err == nil {
			err = measureBackend(ctx, b, ts)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("catalog: measure storage on backend %q: %w", name, err))
			continue
		}
		all = append(all, ts...)
	}
	return all, errors.Join(errs...)
}

// measureBackend fills in the sizes of ts, the tenants on b.
func measureBackend(ctx context.Context, b Backend, ts []*measured) error {
	var shared, schemas, databases []*measured
	for _, m := range ts {
		switch m.tier {
		case TierShared:
			shared = append(shared, m)
		case TierSchema:
			schemas = append(schemas, m)
		case TierDatabase:
			databases = append(databases, m)
		}
	}
	if len(shared) > 0 {
		if err := measureIn(ctx, b, b.SharedDatabase, func(conn *pgx.Conn) error {
			shares, err := sharedShares(ctx, conn)
			for _, m := range shared {
				m.bytes = shares[m.id]
			}
			return err
		}); err != nil {
			return err
		}
	}
	if len(schemas) > 0 {
		if err := measureIn(ctx, b, b.SchemaDatabase, func(conn *pgx.Conn) error {
			return fill(ctx, conn, schemas, func(m *measured) string { return m.schema }, `SELECT n.nspname, sum(pg_total_relation_size(c.oid))::bigint
				FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
				WHERE c.relkind IN ('r', 'm') AND n.nspname = ANY($1) GROUP BY n.nspname`)
		}); err != nil {
			return err
		}
	}
	if len(databases) > 0 {
		return measureIn(ctx, b, "", func(conn *pgx.Conn) error {
			return fill(ctx, conn, databases, func(m *measured) string { return m.database },
				"SELECT datname, pg_database_size(oid) FROM pg_database WHERE datname = ANY($1)")
		})
	}
	return nil
}

// measureIn runs f on an admin connection to database on b (the admin
// DSN's own when empty).
func measureIn(ctx context.Context, b Backend, database string, f func(*pgx.Conn) error) error {
	conn, err := migrations.ConnectAs(ctx, b.AdminDSN, database)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return f(conn)
}

// fill runs query, which takes the keys of ts (key) as $1 and returns
// (key, bytes) rows, and sets the sizes of ts from it; a key it does not
// return (an empty schema) has none.
func fill(ctx context.Context, conn *pgx.Conn, ts []*measured, key func(*measured) string, query string) error {
	keys := make([]string, 0, len(ts))
	byKey := make(map[string][]*measured, len(ts))
	for _, m := range ts {
		if k := key(m); k != "" {
			keys = append(keys, k)
			byKey[k] = append(byKey[k], m)
		}
	}
	rows, err := conn.Query(ctx, query, keys)
	if err != nil {
		return err
	}
	var k string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&k, &n}, func() error {
		for _, m := range byKey[k] {
			m.bytes = n
		}
		return nil
	})
	return err
}

// sharedShares estimates each tenant's storage in a shared-tier database,
// by tenant id: for every table with a tenant_id column, the data of the
// tenant's rows as stored (the sum of pg_column_size of their columns:
// compressed, TOASTed values at their TOASTed size) plus rowOverhead a
// row. It is exact for the rows' data and their tuple headers; not
// counted, for any tenant, are the tables' indexes, page headers, free
// space and dead rows not yet vacuumed (the shared database's own cost,
// which would otherwise pass from a tenant that deletes to its
// neighbours). So a DELETE lowers the figure at the next measurement.
// Cost: one sequential scan of every shared table per measuring interval
// for all the tenants at once, reading each row's columns but not their
// TOASTed values.
//
// Row-level security is switched off for the scan, as the admin role may
// do: should it not bypass the policies, PostgreSQL fails the scan rather
// than count nothing.
func sharedShares(ctx context.Context, conn *pgx.Conn) (map[string]int64, error) {
	if _, err := conn.Exec(ctx, "SET row_security = off"); err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname),
			(SELECT string_agg(format('coalesce(pg_column_size(%I), 0)', a.attname), ' + ' ORDER BY a.attnum)
			 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
			AND EXISTS (SELECT FROM pg_attribute t WHERE t.attrelid = c.oid AND t.attname = 'tenant_id' AND NOT t.attisdropped)`)
	if err != nil {
		return nil, err
	}
	sums := map[string]string{}
	var table, sum string
	if _, err := pgx.ForEachRow(rows, []any{&table, &sum}, func() error { sums[table] = sum; return nil }); err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for table, sum := range sums {
		rows, err := conn.Query(ctx, "SELECT tenant_id::text, count(*), sum("+sum+")::bigint FROM "+table+" WHERE tenant_id IS NOT NULL GROUP BY 1")
		if err != nil {
			return nil, err
		}
		var id string
		var n, data int64
		if _, err := pgx.ForEachRow(rows, []any{&id, &n, &data}, func() error {
			out[id] += rowBytes(n, data)
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// rowOverhead is what a heap row costs beyond its columns' data: its
// tuple header (23 bytes, aligned to 24) and line pointer (4).
const rowOverhead = 28

// rowBytes is the storage charged for n rows holding data bytes of
// column data.
func rowBytes(n, data int64) int64 { return data + n*rowOverhead }

// storeStorage writes the sizes measured to the catalog and to the hour's
// usage, in one transaction.
func (c *Catalog) storeStorage(ctx context.Context, ms []*measured, hour time.Time) error {
	ids, subdomains, bytes := make([]string, len(ms)), make([]string, len(ms)), make([]int64, len(ms))
	for i, m := range ms {
		ids[i], subdomains[i], bytes[i] = m.id, m.subdomain, m.bytes
	}
	err := pgx.BeginFunc(ctx, c.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE tenants SET storage_bytes = m.b, storage_measured_at = now()
			FROM unnest($1::text[], $2::bigint[]) AS m (id, b) WHERE tenants.id = m.id`, ids, bytes); err != nil {
			return err
		}
		// Megabytes rounded up: any storage at all bills as at least 1 MB.
		_, err := tx.Exec(ctx, `INSERT INTO usage_hourly AS u (tenant_id, hour, instance, storage_mb)
			SELECT s, $1, $2, (b + 1048575) / 1048576 FROM unnest($3::text[], $4::bigint[]) AS m (s, b)
			ON CONFLICT (tenant_id, hour, instance) DO UPDATE SET storage_mb = greatest(u.storage_mb, excluded.storage_mb)`,
			hour, StorageInstance, subdomains, bytes)
		return err
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("catalog: store storage: %w", err)
	}
	return err
}
