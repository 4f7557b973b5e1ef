package migrations

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
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

// appStep is one app migration to run on a target, in the target's tier's
// form, or why it cannot run (err), which stops the target there.
type appStep struct {
	m    Migration
	down bool
	err  error
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
	var steps []appStep
	for i, m := range set.ms {
		f := set.forms[t.Kind][i]
		sum, ok := applied[m.Version]
		switch {
		case ok && sum != m.Checksum:
			steps = append(steps, appStep{err: &ChecksumError{Target: t, Version: m.Version, Name: m.Name}})
		case ok:
		case f.upErr != nil:
			steps = append(steps, appStep{err: fmt.Errorf("migrations: %s: app %s refused for the %s tier: %w", t, m.label(), t.Kind, f.upErr)})
		default:
			steps = append(steps, appStep{m: f.up})
		}
	}
	n, err := t.runApp(ctx, db, steps, opts)
	res, err := t.appOutcome(ctx, db, set, err)
	if res != nil {
		res.Applied = n
	}
	return res, err
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
	steps := make([]appStep, len(above))
	for k, v := range above {
		i := set.index(v)
		switch {
		case i < 0:
			steps[k].err = fmt.Errorf("migrations: %s: app version %d is applied here but not stored in the catalog, so its down SQL is unknown", t, v)
		case set.forms[t.Kind][i].downErr != nil:
			steps[k].err = fmt.Errorf("migrations: %s: app %s cannot be reverted in the %s tier: %w", t, set.ms[i].label(), t.Kind, set.forms[t.Kind][i].downErr)
		default:
			steps[k] = appStep{m: set.forms[t.Kind][i].down, down: true}
		}
	}
	n, err := t.runApp(ctx, db, steps, opts)
	res, err := t.appOutcome(ctx, db, set, err)
	if res != nil {
		res.Reverted = n
	}
	return res, err
}

// runApp runs steps in order, each in its own transaction with the lock
// retries of opts, until one fails, and returns how many it ran.
func (t Target) runApp(ctx context.Context, db DB, steps []appStep, opts Options) (int, error) {
	locks := opts.lockPolicy()
	n := 0
	for _, s := range steps {
		if s.err != nil {
			return n, s.err
		}
		ran, err := withLockRetries(ctx, opts, t, s.m, locks, func() (bool, error) {
			return t.change(ctx, db, locks, appLedger, s.m, s.down)
		})
		if err != nil {
			dir := ""
			if s.down {
				dir = " down"
			}
			return n, fmt.Errorf("migrations: %s: app %04d_%s%s: %w", t, s.m.Version, s.m.Name, dir, err)
		}
		if ran {
			n++
		}
	}
	return n, nil
}

// appOutcome is t's state after a run that ended with err: the run's
// error wins over one reading the state.
func (t Target) appOutcome(ctx context.Context, db DB, set *appSet, err error) (*AppResult, error) {
	res, serr := appState(ctx, db, t, set)
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
	table, err := t.readLedger(ctx, db, appLedger)
	if err != nil {
		return nil, fmt.Errorf("migrations: %s: %w", t, err)
	}
	if table != "" {
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, "SELECT version, checksum FROM "+table+" ORDER BY version")
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
