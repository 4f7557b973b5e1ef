package migrations

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

// AppResult is the adopter's migrations on one tenant target.
type AppResult struct {
	// Applied and Reverted count what this run did.
	Applied  int `json:"applied,omitempty"`
	Reverted int `json:"reverted,omitempty"`
	// Version is the highest version the target has applied; Latest the
	// highest stored in the catalog.
	Version int `json:"version"`
	Latest  int `json:"latest"`
	// Drift: Pending are stored versions the target lacks (it is behind),
	// Unknown are versions the target applied that the stored set lacks,
	// Changed are versions applied with SQL other than the stored one.
	Pending []int `json:"pending,omitempty"`
	Unknown []int `json:"unknown,omitempty"`
	Changed []int `json:"changed,omitempty"`
}

// Drifted reports whether the target differs from the stored set.
func (a *AppResult) Drifted() bool { return len(a.Pending)+len(a.Unknown)+len(a.Changed) > 0 }

// State is the drift in words: "up to date", or what differs.
func (a *AppResult) State() string {
	var parts []string
	if len(a.Pending) > 0 {
		parts = append(parts, "behind: lacks "+versions(a.Pending))
	}
	if len(a.Unknown) > 0 {
		parts = append(parts, "drift: has "+versions(a.Unknown)+", not in the stored set")
	}
	if len(a.Changed) > 0 {
		parts = append(parts, "drift: applied "+versions(a.Changed)+" with other SQL")
	}
	if len(parts) == 0 {
		return "up to date"
	}
	return strings.Join(parts, "; ")
}

func (a *AppResult) String() string {
	s := fmt.Sprintf("app at version %d", a.Version)
	switch {
	case a.Applied > 0:
		s = fmt.Sprintf("app: applied %d, now at version %d", a.Applied, a.Version)
	case a.Reverted > 0:
		s = fmt.Sprintf("app: reverted %d, now at version %d", a.Reverted, a.Version)
	}
	if a.Drifted() {
		s += " (" + a.State() + ")"
	}
	return s
}

func versions(vs []int) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ", ")
}

// ApplyTenant brings tenant target t up to date: the embedded migrations,
// then the app migrations stored in the catalog control reaches, in t's
// tier's form. Provisioning calls it, so that a tenant created after
// migrate up --dir, on any machine, gets the current app schema.
func ApplyTenant(ctx context.Context, control Querier, db DB, t Target) error {
	if _, err := Apply(ctx, db, t); err != nil {
		return err
	}
	set, err := loadApp(ctx, control)
	if err != nil {
		return err
	}
	_, err = applyApp(ctx, db, t, set, Options{})
	return err
}

// applyApp applies the stored versions t lacks, in version order, each in
// its own transaction under the lock policy of opts, and returns t's state
// afterwards. A version tierddl refuses for t's tier fails t, naming the
// statement and why; the versions before it stay applied.
func applyApp(ctx context.Context, db DB, t Target, set *appSet, opts Options) (*AppResult, error) {
	applied, err := t.applied(ctx, db, appLedger)
	if err != nil {
		return nil, err
	}
	if t.Kind == KindShared && len(applied) < len(set.ms) {
		if err := bootstrapShared(ctx, db, t); err != nil {
			return nil, err
		}
	}
	locks := opts.lockPolicy()
	n := 0
	for i, m := range set.ms {
		if sum, ok := applied[m.Version]; ok {
			if sum != m.Checksum {
				err = &ChecksumError{Target: t, Version: m.Version, Name: m.Name}
				break
			}
			continue
		}
		f := set.forms[t.Kind][i]
		if f.upErr != nil {
			err = fmt.Errorf("migrations: %s: app %s refused for the %s tier: %w", t, m.label(), t.Kind, f.upErr)
			break
		}
		ran, err2 := withLockRetries(ctx, opts, t, f.up, locks, func() (bool, error) {
			return t.change(ctx, db, locks, appLedger, f.up, false)
		})
		if err = err2; err != nil {
			err = fmt.Errorf("migrations: %s: app %s: %w", t, m.label(), err)
			break
		}
		if ran {
			n++
		}
	}
	res, serr := appState(ctx, db, t, set)
	if res != nil {
		res.Applied = n
	}
	if err == nil {
		err = serr
	}
	return res, err
}

// bootstrapShared prepares a shared database for transformed migrations
// (tierddl.Bootstrap), as RegisterBackend does, so that one registered by
// an earlier release gets the per-tenant id function too. The target's
// advisory lock keeps two runners from replacing the function at once.
func bootstrapShared(ctx context.Context, db DB, t Target) error {
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", t.lockKey()); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, tierddl.Bootstrap())
		return err
	})
	if err != nil {
		return fmt.Errorf("migrations: %s: per-tenant ids: %w", t, err)
	}
	return nil
}

// revertApp runs the stored down migrations of the versions above to that
// t has applied, highest first, each in its own transaction.
func revertApp(ctx context.Context, db DB, t Target, set *appSet, to int, opts Options) (*AppResult, error) {
	applied, err := t.applied(ctx, db, appLedger)
	if err != nil {
		return nil, err
	}
	var above []int
	for v := range applied {
		if v > to {
			above = append(above, v)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(above)))
	locks := opts.lockPolicy()
	n := 0
	for _, v := range above {
		i := set.index(v)
		if i < 0 {
			err = fmt.Errorf("migrations: %s: app version %d is applied here but not stored in the catalog, so its down SQL is unknown", t, v)
			break
		}
		m, f := set.ms[i], set.forms[t.Kind][i]
		if f.downErr != nil {
			err = fmt.Errorf("migrations: %s: app %s cannot be reverted in the %s tier: %w", t, m.label(), t.Kind, f.downErr)
			break
		}
		ran, err2 := withLockRetries(ctx, opts, t, f.down, locks, func() (bool, error) {
			return t.change(ctx, db, locks, appLedger, f.down, true)
		})
		if err = err2; err != nil {
			err = fmt.Errorf("migrations: %s: app %s down: %w", t, m.label(), err)
			break
		}
		if ran {
			n++
		}
	}
	res, serr := appState(ctx, db, t, set)
	if res != nil {
		res.Reverted = n
	}
	if err == nil {
		err = serr
	}
	return res, err
}

// appState compares what t has applied with the stored set, without
// changing anything.
func appState(ctx context.Context, db DB, t Target, set *appSet) (*AppResult, error) {
	res := &AppResult{Latest: set.latest()}
	applied := map[int]string{}
	var exists bool
	if err := db.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", t.ledger(appLedger)).Scan(&exists); err != nil {
		return nil, fmt.Errorf("migrations: %s: %w", t, err)
	}
	if exists {
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, "SELECT version, checksum FROM "+t.ledger(appLedger)+" ORDER BY version")
			if err != nil {
				return err
			}
			var v int
			var sum string
			_, err = pgx.ForEachRow(rows, []any{&v, &sum}, func() error {
				applied[v] = sum
				res.Version = v
				i := set.index(v)
				switch {
				case i < 0:
					res.Unknown = append(res.Unknown, v)
				case set.ms[i].Checksum != sum:
					res.Changed = append(res.Changed, v)
				}
				return nil
			})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("migrations: %s: reading %s: %w", t, appLedger, err)
		}
	}
	for _, m := range set.ms {
		if _, ok := applied[m.Version]; !ok {
			res.Pending = append(res.Pending, m.Version)
		}
	}
	return res, nil
}

// grantServing gives the serving role DML on the relations and use of the
// sequences in a tenant database's public schema, within the migration's
// transaction: there the adopter's DDL runs as written, as the migrating
// role, and the proxy's sessions run as the serving role. The ledgers stay
// the migrating role's alone.
func grantServing(ctx context.Context, tx pgx.Tx) error {
	rows, err := tx.Query(ctx, `
		SELECT format(CASE WHEN c.relkind = 'S' THEN 'GRANT USAGE, SELECT ON SEQUENCE %s TO %I'
		                   ELSE 'GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %I' END, c.oid::regclass, $1::text)
		FROM pg_class c
		WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'f', 'S')
		  AND c.relname NOT IN ($2, $3)`, ServingRole, embeddedLedger, appLedger)
	if err != nil {
		return err
	}
	grants, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(grants) == 0 {
		return err
	}
	_, err = tx.Exec(ctx, strings.Join(grants, ";\n"))
	return err
}
