package catalog

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/migrations"
)

const (
	// fewChanges ends the catch-up rounds before the switch: a round that
	// applied fewer leaves the switch little to do.
	fewChanges = 200
	// maxRounds bounds those rounds for a tenant that writes faster than
	// they apply; the switch then catches up the rest.
	maxRounds = 20
)

// replicaRole makes the target's session skip triggers and foreign-key
// checks: the copy is filled in key order, not in the source's order of
// writes, and the tenant's own triggers ran on the source already.
const replicaRole = "SET session_replication_role = replica"

// mover runs one move's steps after planMove.
type mover struct {
	c   *Catalog
	req MoveRequest
	m   *moveRecord
	// src and dst are the tenant at the source and at the target.
	src, dst Tenant

	// Open from the copy on: the source as the admin role, the target in
	// the tenant's context.
	sconn, tconn   *pgx.Conn
	splace, tplace dataPlace
	tables         []Table
	keys           map[string][]string
	// touched are the keys of each table applied since the last round
	// that compared every row (verifyAll), which the hold's round compares.
	touched map[string][]json.RawMessage
}

// step runs fn, records that the move reached step, and stops there when
// the request says so.
func (mv *mover) step(ctx context.Context, step string, fn func(context.Context) error) error {
	if err := fn(ctx); err != nil {
		return fmt.Errorf("step %s: %w", step, err)
	}
	if err := mv.c.setStep(ctx, mv.m, step); err != nil {
		return err
	}
	mv.c.progress(mv.req, "step %s", step)
	return mv.stopAt(step)
}

func (mv *mover) stopAt(step string) error {
	if mv.req.StopAfter == step {
		return ErrMoveStopped
	}
	return nil
}

func (mv *mover) run(ctx context.Context, res *Moved) error {
	if err := mv.stopAt(MovePlanned); err != nil {
		return err
	}
	if err := mv.step(ctx, MoveProvisioned, mv.provision); err != nil {
		return err
	}
	if err := mv.step(ctx, MoveCapturing, mv.capture); err != nil {
		return err
	}
	if err := mv.step(ctx, MoveCopied, func(ctx context.Context) error { return mv.copy(ctx, res) }); err != nil {
		return err
	}
	res.Tables = mv.tables
	return mv.switchOver(ctx, res)
}

func (mv *mover) close(ctx context.Context) {
	for _, c := range []*pgx.Conn{mv.sconn, mv.tconn} {
		if c != nil {
			c.Close(context.WithoutCancel(ctx))
		}
	}
}

// provision creates the target's objects as Create does, migrated to the
// app's current version.
func (mv *mover) provision(ctx context.Context) error {
	c := mv.c
	b, err := c.backend(ctx, c.db, mv.dst.Backend)
	if err != nil {
		return err
	}
	switch mv.dst.Tier {
	case TierSchema:
		return c.provisionSchema(ctx, mv.dst, b)
	case TierDatabase:
		// The role keeps the tenant's stored login password (a new one
		// when it had none): sessions log in with it once switched.
		var stored string
		err := c.db.QueryRow(ctx, "UPDATE tenants SET login_password = coalesce(login_password, $2) WHERE id = $1 RETURNING login_password",
			mv.dst.ID, c.keys.Seal(rand.Text())).Scan(&stored)
		if err != nil {
			return err
		}
		if mv.dst.LoginPassword, err = migrations.OpenTenantLogin(c.keys, mv.dst.ID, stored); err != nil {
			return err
		}
		return c.buildDatabase(ctx, &mv.dst, b, mv.dst.LoginPassword)
	}
	return c.migrateShared(ctx, b)
}

// capture installs the change capture on the source.
func (mv *mover) capture(ctx context.Context) error {
	conn, place, err := mv.c.connectSource(ctx, mv.src)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return installCapture(ctx, conn, place, mv.m.id)
}

// copy copies a snapshot of the source taken after the capture began,
// catches up in rounds until few changes are left, then catches up once
// more and compares every table's count and checksum with the source's.
func (mv *mover) copy(ctx context.Context, res *Moved) (err error) {
	c := mv.c
	if mv.sconn, mv.splace, err = c.connectSource(ctx, mv.src); err != nil {
		return err
	}
	if mv.tconn, mv.tplace, err = c.openDataWith(ctx, mv.dst, replicaRole); err != nil {
		return err
	}
	mv.touched = map[string][]json.RawMessage{}
	err = mv.snapshot(ctx)
	if err == nil {
		err = mv.catchUp(ctx, res)
	}
	if err == nil {
		_, err = mv.round(ctx, verifyAll)
	}
	if err == nil {
		// What was written while every row was compared.
		err = mv.catchUp(ctx, res)
	}
	return err
}

// catchUp runs rounds until one applies fewer than fewChanges.
func (mv *mover) catchUp(ctx context.Context, res *Moved) error {
	for range maxRounds {
		n, err := mv.round(ctx, verifyNone)
		res.Rounds++
		if err != nil || n < fewChanges {
			return err
		}
	}
	return nil
}

// snapshot copies every table of one repeatable-read snapshot of the
// source into the target.
func (mv *mover) snapshot(ctx context.Context) error {
	stx, err := mv.sconn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer stx.Rollback(context.WithoutCancel(ctx))
	if mv.tables, err = mv.splace.tables(ctx, stx); err != nil {
		return err
	}
	if mv.keys, err = mv.splace.primaryKeys(ctx, stx); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, mv.tconn, func(ttx pgx.Tx) error {
		target, err := mv.tplace.tables(ctx, ttx)
		if err != nil {
			return err
		}
		for _, tb := range mv.tables {
			if err := matchTable(target, tb); err != nil {
				return err
			}
			if err := mv.tplace.copyIn(ctx, ttx, tb, copyOut(ctx, mv.sconn, mv.splace.selectRows(tb))); err != nil {
				return err
			}
		}
		return nil
	})
}

// verify is what a round compares after applying its changes.
type verify int

const (
	verifyNone verify = iota
	// verifyAll: every table's count and checksum.
	verifyAll
	// verifyChanged: the count and checksum of the rows of every key
	// applied since the verifyAll round (touched); the target's id
	// sequences are continued too. That covers every row: those of other
	// keys are as verifyAll found them on both sides. Its cost grows with
	// the changes, not with the tenant's size: it runs in the hold.
	verifyChanged
)

// round applies the changes captured and visible in one snapshot of the
// source: for each key, the target's row is replaced by the source's row
// of that snapshot, or deleted with it. It returns how many changes it
// applied, which it then deletes from the capture.
func (mv *mover) round(ctx context.Context, check verify) (int, error) {
	stx, err := mv.sconn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, err
	}
	defer stx.Rollback(context.WithoutCancel(ctx))
	changed := map[string][]byte{}
	var ids []int64
	rows, err := stx.Query(ctx, "SELECT tbl, jsonb_agg(DISTINCT pk), array_agg(id) FROM "+captureSchema+".changes WHERE move = $1 GROUP BY tbl", mv.m.id)
	if err != nil {
		return 0, fmt.Errorf("reading the captured changes: %w", err)
	}
	var tbl string
	var pks []byte
	var tids []int64
	if _, err := pgx.ForEachRow(rows, []any{&tbl, &pks, &tids}, func() error {
		changed[tbl] = append([]byte(nil), pks...)
		ids = append(ids, tids...)
		var keys []json.RawMessage
		if err := json.Unmarshal(pks, &keys); err != nil {
			return err
		}
		mv.touched[tbl] = append(mv.touched[tbl], keys...)
		return nil
	}); err != nil {
		return 0, fmt.Errorf("reading the captured changes: %w", err)
	}
	err = pgx.BeginFunc(ctx, mv.tconn, func(ttx pgx.Tx) error {
		for _, tb := range mv.tables {
			if err := mv.apply(ctx, stx, ttx, tb, changed[tb.Name], check); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := stx.Rollback(ctx); err != nil {
		return 0, err
	}
	if check == verifyAll {
		clear(mv.touched)
	}
	if len(ids) > 0 {
		if _, err := mv.sconn.Exec(ctx, "DELETE FROM "+captureSchema+".changes WHERE id = ANY($1)", ids); err != nil {
			return 0, fmt.Errorf("clearing applied changes: %w", err)
		}
	}
	return len(ids), nil
}

// keysIn is the condition "tb's key is among the keys in set", a jsonb
// array of key objects, read as rows of the table at p.
func (mv *mover) keysIn(p dataPlace, tb Table, set string) string {
	cols := make([]string, len(mv.keys[tb.Name]))
	for i, k := range mv.keys[tb.Name] {
		cols[i] = pgx.Identifier{k}.Sanitize()
	}
	list := strings.Join(cols, ", ")
	return "(" + list + ") IN (SELECT " + list + " FROM jsonb_populate_recordset(NULL::" + p.qualified(tb.Name) + ", " + set + "))"
}

// apply applies pks, tb's keys changed (nil: none), and checks tb.
func (mv *mover) apply(ctx context.Context, stx, ttx pgx.Tx, tb Table, pks []byte, check verify) error {
	// On the source, the round's keys are read from the capture in the
	// same snapshot; on the target they are a parameter.
	srcKeys := mv.keysIn(mv.splace, tb, "(SELECT jsonb_agg(pk) FROM "+captureSchema+".changes WHERE move = "+
		strconv.FormatInt(mv.m.id, 10)+" AND tbl = "+quoteLiteral(tb.Name)+")")
	dstKeys := mv.keysIn(mv.tplace, tb, "$1::jsonb")
	if pks != nil {
		del := "DELETE FROM " + mv.tplace.qualified(tb.Name) + " WHERE " + dstKeys
		if mv.tplace.tenant != "" {
			del += " AND tenant_id = " + quoteLiteral(mv.tplace.tenant)
		}
		if _, err := ttx.Exec(ctx, del, string(pks)); err != nil {
			return fmt.Errorf("catching up %s: %w", tb.Name, err)
		}
		if err := mv.tplace.copyIn(ctx, ttx, tb, copyOut(ctx, mv.sconn, mv.splace.selectWhere(tb, srcKeys))); err != nil {
			return err
		}
	}
	switch check {
	case verifyAll:
		return compare(tb.Name, func() (int64, string, error) { return mv.splace.checksum(ctx, stx, tb) },
			func() (int64, string, error) { return mv.tplace.checksum(ctx, ttx, tb) })
	case verifyChanged:
		if touched := mv.touched[tb.Name]; len(touched) > 0 {
			set, err := json.Marshal(touched)
			if err != nil {
				return err
			}
			if err := compare(tb.Name+" (rows changed since all were compared)", func() (int64, string, error) {
				return checksumOf(ctx, stx, tb.Name, mv.splace.selectWhere(tb, mv.keysIn(mv.splace, tb, "$1::jsonb")), string(set))
			}, func() (int64, string, error) {
				return checksumOf(ctx, ttx, tb.Name, mv.tplace.selectWhere(tb, dstKeys), string(set))
			}); err != nil {
				return err
			}
		}
		return mv.tplace.continueIDs(ctx, ttx, tb)
	}
	return nil
}

// compare reads a table's count and checksum on both sides and reports
// a difference as a *ChecksumError.
func compare(table string, source, target func() (int64, string, error)) error {
	sn, ssum, err := source()
	if err != nil {
		return err
	}
	tn, tsum, err := target()
	if err != nil {
		return err
	}
	if sn != tn || ssum != tsum {
		return &ChecksumError{Table: table, SourceRows: sn, SourceMD5: ssum, Rows: tn, LoadMD5: tsum}
	}
	return nil
}

// switchOver holds the tenant on every proxy, fences the source, catches
// up the last changes, checks, and switches the catalog; the switch's
// commit releases the proxies. A failure releases them and unfences, and
// the tenant goes on at the source.
func (mv *mover) switchOver(ctx context.Context, res *Moved) error {
	c, m := mv.c, mv.m
	start := time.Now()
	if err := c.db.QueryRow(ctx, `UPDATE tenant_moves SET step = $2, hold_seq = hold_seq + 1, updated_at = now()
		WHERE id = $1 RETURNING hold_seq`, m.id, MoveHolding).Scan(&m.holdSeq); err != nil {
		return err
	}
	m.step = MoveHolding
	// phases times the hold's parts for the progress line.
	var phases []string
	timed := func(name string, fn func() error) error {
		t := time.Now()
		err := fn()
		phases = append(phases, fmt.Sprintf("%s %s", name, time.Since(t).Round(time.Millisecond)))
		return err
	}
	var changes int
	err := timed("acknowledged", func() error { return c.awaitAcks(ctx, m.id, m.holdSeq) })
	if err == nil {
		if err = mv.stopAt(MoveHolding); err != nil {
			return err
		}
		err = timed("fenced", func() error { return fence(ctx, mv.sconn, m.id, true) })
		if err == nil {
			if err = mv.stopAt(MoveFenced); err != nil {
				return err
			}
		}
	}
	if err == nil {
		err = timed("caught up", func() (err error) {
			changes, err = mv.round(ctx, verifyChanged)
			res.Rounds++
			return err
		})
	}
	if err == nil {
		err = timed("switched", func() error { return mv.flip(ctx) })
	}
	res.Hold = time.Since(start)
	if err != nil {
		cctx := context.WithoutCancel(ctx)
		// Unfenced before the release: a released transaction must find
		// the source taking writes. A switch whose commit's answer was
		// lost stays switched (the update matches no row then).
		fence(cctx, mv.sconn, m.id, false)
		c.db.Exec(cctx, "UPDATE tenant_moves SET step = $2, updated_at = now() WHERE id = $1 AND step = $3", m.id, MoveCopied, MoveHolding)
		return err
	}
	c.progress(mv.req, "step %s: held the tenant's new transactions for %s (%s; %d changes)", MoveSwitched,
		res.Hold.Round(time.Millisecond), strings.Join(phases, ", "), changes)
	c.log.Info("tenant moved", zap.String("tenant", m.tenant), zap.Stringer("from", m.source), zap.Stringer("to", m.target),
		zap.Duration("hold", res.Hold), zap.Int("rounds", res.Rounds))
	return mv.stopAt(MoveSwitched)
}

// flip points the tenant's row at the target and records the switch, in
// one transaction: its commit is the switch.
func (mv *mover) flip(ctx context.Context) error {
	m, to := mv.m, mv.m.target
	var url any
	if to.Tier == TierDatabase {
		b, err := mv.c.backend(ctx, mv.c.db, to.Backend)
		if err != nil {
			return err
		}
		url = databaseURLOf(b.AdminDSN, to.Database)
	}
	var schema any
	if to.Schema != "" {
		schema = to.Schema
	}
	err := pgx.BeginFunc(ctx, mv.c.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE tenants SET isolation_level = $2, backend = $3, data_region = $4, database = $5,
			database_url = $6, schema_name = $7 WHERE id = $1`, m.tenant, string(to.Tier), to.Backend, to.Region, to.Database, url, schema); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE tenant_moves SET step = $2, updated_at = now(), keep_until = now() + keep_for,
			hold_ms = extract(epoch FROM clock_timestamp() - updated_at) * 1000 WHERE id = $1`, m.id, MoveSwitched)
		return err
	})
	if err == nil {
		m.step = MoveSwitched
	}
	return err
}
