package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// Place is where a tenant's data lives: what a move changes in its row.
type Place struct {
	Tier     Tier   `json:"tier"`
	Backend  string `json:"backend"`
	Region   string `json:"region"`
	Database string `json:"database"`
	Schema   string `json:"schema,omitempty"`
}

func placeOf(t Tenant) Place {
	return Place{Tier: t.Tier, Backend: t.Backend, Region: t.Region, Database: t.Database, Schema: t.SchemaName}
}

// at is t as it would be at p.
func (p Place) at(t Tenant) Tenant {
	t.Tier, t.Backend, t.Region, t.Database, t.SchemaName = p.Tier, p.Backend, p.Region, p.Database, p.Schema
	return t
}

func (p Place) String() string {
	return fmt.Sprintf("%s tier on %s (%s)", p.Tier, p.Backend, p.Region)
}

// Move steps, in order: the step a move's record (tenant_moves) has
// reached. Before MoveSwitched the catalog routes the tenant to the
// source, after it to the target.
const (
	MovePlanned     = "planned"     // the record exists with the target's fresh names
	MoveProvisioned = "provisioned" // the target's schema or database exists, migrated
	MoveCapturing   = "capturing"   // the source's tables record the tenant's changes
	MoveCopied      = "copied"      // a snapshot is copied, caught up, checksums equal
	MoveHolding     = "holding"     // the proxies hold the tenant's new transactions
	MoveSwitched    = "switched"    // the catalog routes the tenant to the target
	MoveKeeping     = "keeping"     // the source is kept until keep_until (--keep-source)
	MoveDone        = "done"        // the source is dropped
)

// MoveFenced is no step of the record but a point StopAfter may name:
// holding, with the source's fence set and the switch not made.
const MoveFenced = "fenced"

var moveSteps = []string{MovePlanned, MoveProvisioned, MoveCapturing, MoveCopied, MoveHolding, MoveSwitched, MoveKeeping, MoveDone}

func switched(step string) bool {
	return slices.Index(moveSteps, step) >= slices.Index(moveSteps, MoveSwitched)
}

// MoveRequest is what `tenant move` asks for; empty fields keep the
// tenant's.
type MoveRequest struct {
	Subdomain string
	Tier      Tier
	// Backend names the target server; empty means the tenant's own when
	// only the tier changes, else the region's least loaded other one.
	Backend string
	Region  string
	// KeepSource keeps the source's data this long after the switch; the
	// same command run after it drops it (at once with KeepSource 0).
	KeepSource time.Duration
	// Progress, when set, gets a line per step.
	Progress io.Writer
	// StopAfter ends the move right after that step (or MoveFenced) as if
	// the process had died there, undoing nothing (chaos tests): the same
	// move run again resumes or rolls back.
	StopAfter string
}

// Moved is the outcome of Move.
type Moved struct {
	Tenant string `json:"tenant"`
	From   Place  `json:"from"`
	To     Place  `json:"to"`
	// Resumed is the step an interrupted move of the tenant was found at.
	Resumed string  `json:"resumed,omitempty"`
	Tables  []Table `json:"tables,omitempty"`
	// Rounds counts the catch-ups of changes made during the copy.
	Rounds int `json:"rounds"`
	// Hold is how long the tenant's new transactions were held.
	Hold      time.Duration `json:"hold_ns"`
	KeepUntil *time.Time    `json:"keep_until,omitempty"`
}

// ErrMoveStopped is returned, with the move's Moved so far, when
// MoveRequest.StopAfter stopped a move.
var ErrMoveStopped = errors.New("move stopped after the requested step")

// moveRecord is a row of tenant_moves.
type moveRecord struct {
	id             int64
	tenant         string
	source, target Place
	step           string
	holdSeq        int
	keepFor        time.Duration
	keepUntil      *time.Time
}

// Move moves tenant req.Subdomain's data to another tier, server or
// region while it keeps working (README "Moving tenants"): provision the
// target, capture the source's changes, copy a snapshot, catch up, then
// hold the tenant's new transactions on every proxy, catch up the rest,
// compare counts and checksums, switch the catalog and release. A move
// interrupted before the switch is rolled back by the same command run
// again, which then moves afresh; one interrupted after it is finished.
// A failure before the switch rolls the move back at once: the tenant
// stays where it was.
func (c *Catalog) Move(ctx context.Context, req MoveRequest) (*Moved, error) {
	t, err := c.tenant(ctx, c.db, req.Subdomain)
	if err != nil {
		return nil, err
	}
	if t.Status == StatusProvisioning {
		return nil, &StateError{Tenant: t.ID, Status: t.Status, Op: "move"}
	}
	unlock, err := c.lockMove(ctx, t.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	res := &Moved{Tenant: t.ID, From: placeOf(t)}
	m, err := c.openMove(ctx, t.ID)
	if err != nil {
		return nil, err
	}
	if m != nil {
		res.Resumed, res.From, res.To = m.step, m.source, m.target
		if switched(m.step) {
			return res, c.finishMove(ctx, req, m, res)
		}
		if err := c.rollBackMove(ctx, t, m); err != nil {
			return nil, fmt.Errorf("catalog: rolling back the move of %q interrupted at step %s: %w", t.ID, m.step, err)
		}
		c.progress(req, "the move interrupted at step %s is rolled back; the tenant stayed at %s", m.step, m.source)
		res.From = m.source
	}
	to, err := c.moveTarget(ctx, t, req)
	if err != nil {
		return nil, err
	}
	res.To = to
	if m, err = c.planMove(ctx, t, to, req.KeepSource); err != nil {
		return nil, err
	}
	mv := &mover{c: c, req: req, m: m, src: t, dst: to.at(t)}
	if err := mv.run(ctx, res); err != nil {
		if errors.Is(err, ErrMoveStopped) {
			mv.close(ctx)
			return res, err
		}
		mv.close(ctx)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		// The record, not memory, says whether the switch committed (its
		// answer may have been lost): a switched move is never undone.
		if cur, rerr := c.openMove(cctx, t.ID); rerr != nil || (cur != nil && switched(cur.step)) {
			return nil, fmt.Errorf("catalog: move of %q may have switched; run the same command again to finish it: %w", t.ID, errors.Join(err, rerr))
		}
		if rerr := c.rollBackMove(cctx, t, m); rerr != nil {
			return nil, fmt.Errorf("catalog: move of %q failed (%w) and its rollback failed too (%v): run the same command again", t.ID, err, rerr)
		}
		return nil, fmt.Errorf("catalog: move of %q (rolled back; the tenant stays at %s): %w", t.ID, m.source, err)
	}
	mv.close(ctx)
	return res, c.finishMove(ctx, req, m, res)
}

func (c *Catalog) progress(req MoveRequest, format string, args ...any) {
	if req.Progress != nil {
		fmt.Fprintf(req.Progress, format+"\n", args...)
	}
}

// lockMove takes a session lock of the control database for tenant's
// moves, so that a second command cannot roll back a move that is still
// running; a process that dies lets go of it.
func (c *Catalog) lockMove(ctx context.Context, tenant string) (unlock func(), err error) {
	conn, err := c.db.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, hashtext($2))", moveLockClass, tenant).Scan(&ok); err != nil {
		conn.Release()
		return nil, fmt.Errorf("catalog: %w", err)
	}
	if !ok {
		conn.Release()
		return nil, &ValidationError{Field: "tenant", Value: tenant, Reason: "is being moved by another command right now"}
	}
	return func() {
		conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1, hashtext($2))", moveLockClass, tenant)
		conn.Release()
	}, nil
}

const moveColumns = "id, tenant_id, source, target, step, hold_seq, extract(epoch FROM keep_for)::float8, keep_until"

func scanMove(row pgx.Row) (*moveRecord, error) {
	var m moveRecord
	var src, dst []byte
	var keep float64
	if err := row.Scan(&m.id, &m.tenant, &src, &dst, &m.step, &m.holdSeq, &keep, &m.keepUntil); err != nil {
		return nil, err
	}
	m.keepFor = time.Duration(keep * float64(time.Second))
	if err := json.Unmarshal(src, &m.source); err != nil {
		return nil, err
	}
	return &m, json.Unmarshal(dst, &m.target)
}

// openMove returns tenant's unfinished move, or nil.
func (c *Catalog) openMove(ctx context.Context, tenant string) (*moveRecord, error) {
	m, err := scanMove(c.db.QueryRow(ctx, "SELECT "+moveColumns+" FROM tenant_moves WHERE tenant_id = $1 AND step <> $2", tenant, MoveDone))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: reading the move of %q: %w", tenant, err)
	}
	return m, nil
}

// moveTarget is where req moves t: the tier asked for (else t's), on the
// backend asked for, else on t's own when its region is kept, else on
// the least loaded backend of the region; the target's schema or database
// gets a fresh name.
func (c *Catalog) moveTarget(ctx context.Context, t Tenant, req MoveRequest) (Place, error) {
	tier := req.Tier
	switch tier {
	case "":
		tier = t.Tier
	case TierShared, TierSchema, TierDatabase:
	default:
		return Place{}, &ValidationError{Field: "tier", Value: string(tier), Reason: "must be shared, schema or database"}
	}
	region := req.Region
	var b Backend
	var err error
	switch {
	case req.Backend != "":
		if b, err = c.backend(ctx, c.db, req.Backend); err != nil {
			return Place{}, err
		}
		if region != "" && b.Region != region {
			return Place{}, &ValidationError{Field: "backend", Value: b.Name, Reason: "is in region " + b.Region + ", not " + region}
		}
	case (region == "" || region == t.Region) && tier != t.Tier:
		b, err = c.backend(ctx, c.db, t.Backend)
	default:
		if region == "" {
			region = t.Region
		}
		b, err = c.place(ctx, region, tier, t.Backend)
	}
	if err != nil {
		return Place{}, err
	}
	if b.Name == t.Backend && tier == t.Tier {
		return Place{}, &ValidationError{Field: "target", Value: string(tier) + " on " + b.Name, Reason: "is where tenant " + t.ID + " already is"}
	}
	to := Place{Tier: tier, Backend: b.Name, Region: b.Region}
	switch tier {
	case TierShared:
		to.Database = b.SharedDatabase
	case TierSchema:
		to.Database, to.Schema = b.SchemaDatabase, c.newName()
	case TierDatabase:
		to.Database = c.newName()
	}
	return to, nil
}

// planMove writes the move's record at its first step.
func (c *Catalog) planMove(ctx context.Context, t Tenant, to Place, keep time.Duration) (*moveRecord, error) {
	src, err := json.Marshal(placeOf(t))
	if err != nil {
		return nil, err
	}
	dst, err := json.Marshal(to)
	if err != nil {
		return nil, err
	}
	m, err := scanMove(c.db.QueryRow(ctx, `INSERT INTO tenant_moves (tenant_id, source, target, step, keep_for)
		VALUES ($1, $2, $3, $4, make_interval(secs => $5)) RETURNING `+moveColumns, t.ID, src, dst, MovePlanned, keep.Seconds()))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return nil, &ValidationError{Field: "tenant", Value: t.ID, Reason: "has a move under way"}
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: planning the move of %q: %w", t.ID, err)
	}
	return m, nil
}

// setStep records that m reached step.
func (c *Catalog) setStep(ctx context.Context, m *moveRecord, step string) error {
	if _, err := c.db.Exec(ctx, "UPDATE tenant_moves SET step = $2, updated_at = now() WHERE id = $1", m.id, step); err != nil {
		return fmt.Errorf("catalog: move of %q: recording step %s: %w", m.tenant, step, err)
	}
	m.step = step
	return nil
}

// rollBackMove undoes m, which has not switched: the source's capture
// and fence go first, so that the proxies released by the record's
// deletion send the tenant's transactions to a source that takes them;
// then the record; then whatever of the target exists.
func (c *Catalog) rollBackMove(ctx context.Context, t Tenant, m *moveRecord) error {
	if err := c.dropCapture(ctx, m, m.source.at(t)); err != nil {
		return err
	}
	if _, err := c.db.Exec(ctx, "DELETE FROM tenant_moves WHERE id = $1", m.id); err != nil {
		return err
	}
	b, err := c.backend(ctx, c.db, m.target.Backend)
	if err != nil {
		return err
	}
	dst := m.target.at(t)
	if err := dropData(ctx, dst, b); err != nil {
		return fmt.Errorf("dropping the target's copy: %w", err)
	}
	c.log.Info("tenant move rolled back", zap.String("tenant", t.ID), zap.String("step", m.step))
	return nil
}

// finishMove ends m, which has switched: it keeps the source until
// keep_until, or drops it and marks the move done.
func (c *Catalog) finishMove(ctx context.Context, req MoveRequest, m *moveRecord, res *Moved) error {
	if m.step == MoveSwitched && m.keepFor > 0 {
		if err := c.db.QueryRow(ctx, `UPDATE tenant_moves SET step = $2, updated_at = now() WHERE id = $1 RETURNING keep_until`,
			m.id, MoveKeeping).Scan(&m.keepUntil); err != nil {
			return fmt.Errorf("catalog: move of %q: %w", m.tenant, err)
		}
		m.step = MoveKeeping
	}
	if m.step == MoveKeeping && m.keepUntil != nil && time.Now().Before(*m.keepUntil) && (res.Resumed == "" || req.KeepSource > 0) {
		res.KeepUntil = m.keepUntil
		c.progress(req, "the source is kept until %s; run the same command after it (or with --keep-source 0) to drop it", m.keepUntil.UTC().Format(time.RFC3339))
		return nil
	}
	t, err := c.tenant(ctx, c.db, m.tenant)
	if err != nil {
		return err
	}
	src := m.source.at(t)
	if err := c.dropCapture(ctx, m, src); err != nil {
		return err
	}
	b, err := c.backend(ctx, c.db, m.source.Backend)
	if err != nil {
		return err
	}
	if err := dropData(ctx, src, b); err != nil {
		return fmt.Errorf("catalog: move of %q: dropping the source: %w", m.tenant, err)
	}
	c.progress(req, "source dropped: %s", m.source)
	return c.setStep(ctx, m, MoveDone)
}
