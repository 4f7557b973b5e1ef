package catalog

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/migrations"
)

// Column is one column of a tenant's table, as an export's manifest
// records it.
type Column struct {
	Name string `json:"name"`
	// Type is PostgreSQL's format_type, e.g. "bigint" or "character varying(20)".
	Type string `json:"type"`
}

// Table is one table of a tenant's data: its columns (in the shared tier
// without tenant_id) and, once read, its rows' count and checksum.
type Table struct {
	Name    string   `json:"name"`
	Columns []Column `json:"columns"`
	Rows    int64    `json:"rows"`
	// MD5 is the md5 of the rows' text, sorted under the C collation and
	// joined by newlines, with the columns in this order (checksumQuery).
	MD5 string `json:"md5"`
}

// sessionSettings fixes how values print, so that two servers (or one at
// two times) render the same rows to the same text and checksum.
const sessionSettings = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; " +
	"SET extra_float_digits = 3; SET bytea_output = 'hex'"

// bookkeeping are the proxy's own tables in a tenant's place: the
// migration runners' ledgers and the isolation canary's table. They are
// not the tenant's data: export leaves them out, import skips them.
var bookkeeping = []string{"schema_migrations", "app_schema_migrations", "tenantproxy_canary"}

// dataPlace is where a tenant's tables are on an open connection: the
// schema, and in the shared tier the tenant whose rows are its.
type dataPlace struct {
	schema string
	// tenant, when set, limits every read to rows whose tenant_id is it,
	// and leaves that column out: the shared tier.
	tenant string
}

func (p dataPlace) qualified(table string) string { return pgx.Identifier{p.schema, table}.Sanitize() }

// selectRows is the SELECT of tb's columns of p's rows.
func (p dataPlace) selectRows(tb Table) string { return p.selectWhere(tb, "") }

// selectWhere is selectRows of the rows where cond holds too ("": all).
func (p dataPlace) selectWhere(tb Table, cond string) string {
	cols := make([]string, len(tb.Columns))
	for i, c := range tb.Columns {
		cols[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	q := "SELECT " + strings.Join(cols, ", ") + " FROM " + p.qualified(tb.Name) + " WHERE true"
	if p.tenant != "" {
		// Validated as a subdomain: no quote can be in it.
		q += " AND tenant_id = '" + p.tenant + "'"
	}
	if cond != "" {
		q += " AND (" + cond + ")"
	}
	return q
}

// checksum counts tb's rows at p and hashes them (Table.MD5).
func (p dataPlace) checksum(ctx context.Context, q pgx.Tx, tb Table) (int64, string, error) {
	return checksumOf(ctx, q, tb.Name, p.selectRows(tb))
}

// checksumOf counts the rows query selects and hashes them (Table.MD5).
func checksumOf(ctx context.Context, q pgx.Tx, table, query string, args ...any) (int64, string, error) {
	var n int64
	var sum string
	err := q.QueryRow(ctx, `SELECT count(*), md5(coalesce(string_agg(r::text, E'\n' ORDER BY r::text COLLATE "C"), ''))
		FROM (`+query+`) r`, args...).Scan(&n, &sum)
	if err != nil {
		return 0, "", fmt.Errorf("checksum of %s: %w", table, err)
	}
	return n, sum, nil
}

// tables lists p's tables, in an order in which their foreign keys can be
// satisfied (referenced tables first), with their columns; generated
// columns are left out, as COPY cannot write them.
func (p dataPlace) tables(ctx context.Context, q pgx.Tx) ([]Table, error) {
	var ts []Table
	rows, err := q.Query(ctx, `SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname <> ALL ($2)
		  AND ($3 = '' OR EXISTS (SELECT FROM pg_attribute t WHERE t.attrelid = c.oid AND t.attname = 'tenant_id' AND NOT t.attisdropped))
		ORDER BY c.relname, a.attnum`, p.schema, bookkeeping, p.tenant)
	if err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}
	var table, column, typ string
	_, err = pgx.ForEachRow(rows, []any{&table, &column, &typ}, func() error {
		if p.tenant != "" && column == "tenant_id" {
			return nil
		}
		if len(ts) == 0 || ts[len(ts)-1].Name != table {
			ts = append(ts, Table{Name: table})
		}
		ts[len(ts)-1].Columns = append(ts[len(ts)-1].Columns, Column{Name: column, Type: typ})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}
	return p.dependencyOrder(ctx, q, ts)
}

// dependencyOrder sorts ts so that a table comes after every other table
// its foreign keys reference; names break ties, so two databases with the
// same tables list them alike. A cycle of foreign keys is an error: no
// order of COPYs satisfies it.
func (p dataPlace) dependencyOrder(ctx context.Context, q pgx.Tx, ts []Table) ([]Table, error) {
	rows, err := q.Query(ctx, `SELECT DISTINCT c.relname, r.relname FROM pg_constraint f
		JOIN pg_class c ON c.oid = f.conrelid JOIN pg_class r ON r.oid = f.confrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE f.contype = 'f' AND n.nspname = $1 AND f.conrelid <> f.confrelid`, p.schema)
	if err != nil {
		return nil, fmt.Errorf("reading foreign keys: %w", err)
	}
	needs := map[string][]string{}
	var from, to string
	if _, err := pgx.ForEachRow(rows, []any{&from, &to}, func() error {
		needs[from] = append(needs[from], to)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("reading foreign keys: %w", err)
	}
	placed := map[string]bool{}
	ordered := make([]Table, 0, len(ts))
	for len(ordered) < len(ts) {
		progress := false
		for _, tb := range ts {
			if placed[tb.Name] || slices.ContainsFunc(needs[tb.Name], func(n string) bool { return !placed[n] && has(ts, n) }) {
				continue
			}
			placed[tb.Name], progress = true, true
			ordered = append(ordered, tb)
		}
		if !progress {
			return nil, fmt.Errorf("the foreign keys of schema %s form a cycle: no table order satisfies them", p.schema)
		}
	}
	return ordered, nil
}

func has(ts []Table, name string) bool {
	return slices.ContainsFunc(ts, func(t Table) bool { return t.Name == name })
}

// openData connects to t's data as the backend's admin role, with t's
// context: in the shared tier the tenant setting (which the tenant_id
// column defaults to), in the schema tier the tenant's role, so that what
// it writes is as the tenant's own sessions would write it.
func (c *Catalog) openData(ctx context.Context, t Tenant) (*pgx.Conn, dataPlace, error) {
	return c.openDataWith(ctx, t, "")
}

// connectAdmin connects to t's database on its backend as the backend's
// admin role.
func (c *Catalog) connectAdmin(ctx context.Context, t Tenant) (*pgx.Conn, error) {
	b, err := c.backend(ctx, c.db, t.Backend)
	if err != nil {
		return nil, err
	}
	conn, err := migrations.ConnectAs(ctx, b.AdminDSN, t.Database)
	if err != nil {
		return nil, fmt.Errorf("connecting to backend %s: %w", b.Name, err)
	}
	return conn, nil
}

// openDataWith is openData with first, when not empty, run before t's
// context is taken (while the session is still the admin role's).
func (c *Catalog) openDataWith(ctx context.Context, t Tenant, first string) (*pgx.Conn, dataPlace, error) {
	conn, err := c.connectAdmin(ctx, t)
	if err != nil {
		return nil, dataPlace{}, err
	}
	place := dataPlaceOf(t)
	setup := sessionSettings
	if first != "" {
		setup += "; " + first
	}
	switch t.Tier {
	case TierShared:
		setup += "; SELECT set_config('" + migrations.TenantGUC + "', '" + t.ID + "', false)"
	case TierSchema:
		setup += "; SET ROLE " + pgx.Identifier{t.SchemaName}.Sanitize()
	}
	if _, err := conn.Exec(ctx, setup); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, dataPlace{}, fmt.Errorf("tenant %s: %w", t.ID, err)
	}
	return conn, place, nil
}

// dataPlaceOf is where t's tables are in its database.
func dataPlaceOf(t Tenant) dataPlace {
	switch t.Tier {
	case TierShared:
		return dataPlace{schema: "public", tenant: t.ID}
	case TierSchema:
		return dataPlace{schema: t.SchemaName}
	}
	return dataPlace{schema: "public"}
}
