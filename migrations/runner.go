package migrations

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

// DB is what the runner needs from a connection: *pgx.Conn, *pgxpool.Pool
// and *pgxpool.Conn all qualify.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Target is one place that carries a schema_migrations table.
type Target struct {
	Kind    Kind   `json:"kind"`
	Backend string `json:"backend,omitempty"`
	// Database is the database on Backend the target lives in.
	Database string `json:"database"`
	// Schema is the tenant's schema and, by construction, the name of the
	// tenant's role that owns it (schema kind only).
	Schema string `json:"schema,omitempty"`
	// Tenant is the tenant id (schema and database kinds only).
	Tenant string `json:"tenant,omitempty"`
}

func (t Target) String() string {
	switch t.Kind {
	case KindControl:
		return "control"
	case KindShared:
		return "shared " + t.Backend + "/" + t.Database
	case KindSchema:
		return "tenant " + t.Tenant + " (schema " + t.Backend + "/" + t.Database + "/" + t.Schema + ")"
	default:
		return "tenant " + t.Tenant + " (database " + t.Backend + "/" + t.Database + ")"
	}
}

// ChecksumError reports an applied migration whose SQL has since changed.
// Editing history is refused: ship a new version instead.
type ChecksumError struct {
	Target  Target
	Version int
	Name    string
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("migrations: %s: applied migration %d_%s was edited afterwards (checksum differs); add a new migration instead",
		e.Target, e.Version, e.Name)
}

// Ledgers: the tables a target records applied versions in, one for the
// embedded migrations and one for the adopter's (app.go), whose versions
// are numbered independently.
const (
	embeddedLedger = "schema_migrations"
	appLedger      = "app_schema_migrations"
)

// table is the target's schema_migrations, qualified so that the tenant's
// search_path cannot redirect it.
func (t Target) table() string { return t.ledger(embeddedLedger) }

// ledger is the target's table of that name, qualified likewise: in the
// control database's public schema, elsewhere in the proxy's schema
// (proxytables.go), out of the tenant's sight.
func (t Target) ledger(name string) string { return t.proxyTable(name) }

// lockKey names the target's advisory lock. Advisory locks are scoped to the
// current database, so the schema alone tells targets in one database apart.
func (t Target) lockKey() int64 {
	h := fnv.New64a()
	h.Write([]byte("tenantproxy/migrate/" + t.Schema))
	return int64(h.Sum64())
}

// Apply brings t up to date with its kind's migrations under the default
// lock policy (ApplyWith with zero Options).
func Apply(ctx context.Context, db DB, t Target) (int, error) {
	return ApplyWith(ctx, db, t, Options{})
}

// ApplyWith brings t up to date with its kind's migrations (opts.Migrations)
// and returns how many it applied. Each migration runs in its own
// transaction under the target's advisory transaction lock and is recorded
// in that same transaction, so a concurrent Apply on the same target waits,
// then sees the version recorded and skips it: every migration is applied
// exactly once. A migration waits at most opts.LockTimeout for each table
// lock; one that times out is rolled back and retried (opts.LockRetries,
// reported to opts.Retry and opts.Logger), and after the last retry fails
// with a *LockTimeoutError. On error, the migrations before the failing one
// stay applied and the failing one is not: rerunning completes the target.
func ApplyWith(ctx context.Context, db DB, t Target, opts Options) (int, error) {
	ms, err := opts.migrations(t.Kind)
	if err != nil {
		return 0, err
	}
	applied, err := t.applied(ctx, db, embeddedLedger)
	if err != nil {
		return 0, err
	}
	locks := opts.lockPolicy()
	n := 0
	for _, m := range ms {
		if sum, ok := applied[m.Version]; ok {
			if sum != m.Checksum {
				return n, &ChecksumError{Target: t, Version: m.Version, Name: m.Name}
			}
			continue
		}
		ran, err := withLockRetries(ctx, opts, t, m, locks, func() (bool, error) {
			return t.change(ctx, db, locks, embeddedLedger, m, false)
		})
		if err != nil {
			return n, fmt.Errorf("migrations: %s: %d_%s: %w", t, m.Version, m.Name, err)
		}
		if ran {
			n++
		}
	}
	return n, nil
}

// applied creates the target's ledger table when missing (a tenant
// target's with the rest of the proxy's tables, ensureProxyTables) and
// returns the recorded checksum of each applied version.
func (t Target) applied(ctx context.Context, db DB, ledger string) (map[int]string, error) {
	out := map[int]string{}
	table := t.ledger(ledger)
	if err := t.ensureProxyTables(ctx, db); err != nil {
		return nil, err
	}
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", t.lockKey()); err != nil {
			return err
		}
		if t.Kind == KindControl {
			if _, err := tx.Exec(ctx, ledgerDDL(table, ledger)); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, "SELECT version, checksum FROM "+table)
		if err != nil {
			return err
		}
		var v int
		var sum string
		_, err = pgx.ForEachRow(rows, []any{&v, &sum}, func() error {
			out[v] = sum
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("migrations: %s: reading %s: %w", t, ledger, err)
	}
	return out, nil
}

// change applies m (down false) unless a concurrent runner recorded it
// first, or runs m.SQL as m's down migration (down true) unless m is no
// longer recorded; it reports whether it ran m.SQL. The ledger row is
// written or deleted in the same transaction.
func (t Target) change(ctx context.Context, db DB, locks lockPolicy, ledger string, m Migration, down bool) (bool, error) {
	ran := false
	table := t.ledger(ledger)
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", t.lockKey()); err != nil {
			return err
		}
		var sum string
		err := tx.QueryRow(ctx, "SELECT checksum FROM "+table+" WHERE version = $1", m.Version).Scan(&sum)
		recorded := err == nil
		switch {
		case err != nil && !errors.Is(err, pgx.ErrNoRows):
			return err
		case recorded && sum != m.Checksum:
			return &ChecksumError{Target: t, Version: m.Version, Name: m.Name}
		case recorded != down:
			return nil
		}
		if t.Kind == KindShared {
			// The shared tier's ids come from the proxy's per-tenant
			// sequence function, which migrations (the proxy's and the
			// app's, transformed) may name: prepared, or brought up to date
			// on a database registered by an earlier release, under the
			// target's lock, so that concurrent runners do not replace it
			// at once.
			if _, err := tx.Exec(ctx, tierddl.Bootstrap()); err != nil {
				return err
			}
		}
		// Set after taking the advisory lock: waiting for a concurrent
		// runner is fine, only table locks must not queue up for long.
		if set := locks.setLocal(); set != "" {
			if _, err := tx.Exec(ctx, set); err != nil {
				return err
			}
		}
		if t.Kind == KindSchema {
			// Objects land in the tenant's schema and belong to the tenant's
			// role, which is what lets the proxy's SET ROLE reach them and
			// nothing else.
			if _, err := tx.Exec(ctx, "SET LOCAL search_path = "+ident(t.Schema)+"; SET LOCAL ROLE "+ident(t.Schema)); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return err
		}
		if t.Kind == KindSchema {
			if _, err := tx.Exec(ctx, "RESET ROLE"); err != nil {
				return err
			}
		}
		record := "INSERT INTO " + table + " (version, name, checksum) VALUES ($1, $2, $3)"
		args := []any{m.Version, m.Name, m.Checksum}
		if down {
			record, args = "DELETE FROM "+table+" WHERE version = $1", args[:1]
		}
		if _, err := tx.Exec(ctx, record, args...); err != nil {
			return err
		}
		ran = true
		return nil
	})
	return ran, err
}

// Version returns the highest version applied to t, 0 when none is.
func Version(ctx context.Context, db DB, t Target) (int, error) {
	table, err := t.readLedger(ctx, db, embeddedLedger)
	if err != nil || table == "" {
		return 0, err
	}
	var v int
	err = db.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+table).Scan(&v)
	return v, err
}
