package pool

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
	"unique"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// TxTarget is a Target prepared for transaction mode: its tenant context
// rendered once into the Query messages the proxy sends in front of a
// client's first message, so that binding a connection costs no
// allocation and no round trip of its own.
type TxTarget struct {
	Target
	// q is the context's key and Query messages, shared by every TxTarget
	// of the context.
	q unique.Handle[switchQueries]
	// w is reused by every wait of this TxTarget's AcquireTx.
	w *waiter
	// p is the pool of the key, looked up once: pools live as long as
	// their Manager, and skipping the Manager's lock matters when every
	// transaction acquires.
	p *pool
}

// switchQueries are what sets a tenant context on a connection. They are
// interned (unique.Make): every client of a context holds one copy, not
// its own, and the copy goes with its last holder. Immutable: a switch
// writes its seed into a copy (fillSeed). BenchmarkIdleSessionMemory in
// transaction mode: proxy heap per idle client 6.8-7.0 kB with a copy
// per client, 5.9-6.0 kB shared.
type switchQueries struct {
	// key identifies the context: the setup statements joined, as a
	// session-mode setup leaves them in Conn.context too.
	key string
	// fromNeutral establishes the context on a connection that carries
	// none; fromOther first removes another context, in the same Query:
	// the removal is committed on its own (committed), so if the setup
	// proper failed the connection would be left with no tenant context
	// (RLS and the schema privileges fail closed), never with the previous
	// tenant's.
	fromNeutral, fromOther string
}

// neutralize removes every trace of a tenant context that RESET can undo:
// the role (not covered by RESET ALL) and every setting, the tenant GUC,
// search_path and startup settings included; then the per-backend state
// that RESET ALL leaves behind and that transaction mode does not refuse
// (README "Per-backend state"): the protocol-level statements the proxy
// prepared for the previous context, which pg_prepared_statements would
// list to the next holder with their text and which SQL EXECUTE could run
// (DEALLOCATE ALL; their names are digests of the context, so no other
// context could use them anyway), sequences' currval/lastval (DISCARD
// SEQUENCES), and the seed of random(), which it ends by setting to
// seedDigits random digits the proxy writes into each switch (fillSeed).
//
// setseed() and SET seed (also SET LOCAL seed: the setting reverts, the
// generator does not) survive RESET ALL and DISCARD ALL, and nothing
// resets the generator but another seed, so a holder could fix the next
// holder's random(). SET LOCAL seed seeds it once (PostgreSQL arms the
// seed only for an interactive SET) and, being LOCAL in the Query's
// implicit transaction, leaves no setting behind at the COMMIT that
// follows. A seed the proxy draws costs the server a utility statement;
// the former SELECT setseed() of a hash of gen_random_uuid() cost a
// planned SELECT and the server's strong random source: server CPU per
// switch with a point SELECT behind it, pgbench -c 1 on PG15, median of 6
// runs of 20,000 on the loaded 2-core VM: 150 µs before, 90 µs with SET
// LOCAL seed, 110 µs with SELECT setseed(<literal>); the SELECT alone 56.
const neutralize = "RESET ROLE; RESET ALL; DEALLOCATE ALL; DISCARD SEQUENCES; SET LOCAL seed = 0."

// seedDigits is how many decimal digits follow neutralize: 16 keep about
// 53 bits, what setseed keeps of its float8 argument (pg_prng_fseed).
const seedDigits = 16

// reseed is the session-mode release's seed, drawn by the server: the
// release runs once per client, not per transaction. The seed is a 64-bit
// hash of a UUID from the server's strong random source (122 random bits)
// scaled to [-1, 1]. Names are qualified: nothing is left to search_path.
const reseed = "SELECT pg_catalog.setseed(pg_catalog.hashtextextended(pg_catalog.gen_random_uuid()::text, 0)::float8 / 9223372036854775807)"

// resetSQL is the session-mode reset: DISCARD ALL (which refuses to run
// in a transaction block, so the reseed goes in a Query of its own, in the
// same write) and the reseed, which DISCARD ALL does not do.
var resetSQL = []string{"DISCARD ALL", reseed}

// committed ends the neutral part of a switch. In a multi-statement
// Query, a COMMIT ends the implicit transaction: the resets are committed
// whatever happens to the setup statements after it, which run in a
// transaction of their own. Folding both into one block would save the
// server about 10 µs per switch (the same pgbench), but a failed setup
// would then leave the block aborted with the RESETs pending, and a
// client whose first message starts with ROLLBACK would get the previous
// tenant's context back for the rest of that message, which runs before
// the proxy closes the connection. One Query instead of two saves the
// server a ReadyForQuery on every switch.
const committed = "; COMMIT; "

// MaxStatementsPerConn bounds the protocol-level prepared statements the
// proxy keeps on one server connection in transaction mode; past it, the
// next AcquireTx deallocates them all (in the same write) and they are
// prepared again on demand.
const MaxStatementsPerConn = 1000

// NewTxTarget prepares t for AcquireTx. The setup statements run in a
// transaction block of their own (guarded): if one fails, the block is
// left aborted, so the client's first message, written behind them,
// fails with 25P02 instead of running with the context half set (a
// tenant role dropped or revoked under a connected tenant, a cancel);
// the caller then closes the connection. Outside a block the next Query
// would run, with whatever of the context the failed statements left.
func NewTxTarget(t Target) *TxTarget {
	q := switchQueries{key: setupKey(t.Setup)}
	guarded := "BEGIN;\n" + q.key + ";\nCOMMIT"
	neutral := neutralize + strings.Repeat("0", seedDigits)
	if q.key != "" {
		q.fromNeutral = string(appendQuery(nil, guarded))
		q.fromOther = string(appendQuery(nil, neutral+committed+guarded))
	} else {
		q.fromOther = string(appendQuery(nil, neutral))
	}
	return &TxTarget{Target: t, q: unique.Make(q), w: newWaiter()}
}

// seedAt is where the seed's digits start in a TxTarget's fromOther: past
// the Query's type and length and neutralize.
const seedAt = 5 + len(neutralize)

// fillSeed writes seedDigits digits from the operating system's random
// source over the zeros of a switch Query (a copy of fromOther): each switch seeds random() with a value no holder can
// know. The source is read straight into the Query, which allocates
// nothing.
func fillSeed(switchQuery []byte) {
	digits := switchQuery[seedAt : seedAt+seedDigits]
	rand.Read(digits[:8]) // never fails (crypto/rand)
	n := binary.LittleEndian.Uint64(digits[:8])
	for i := range digits {
		digits[i] = '0' + byte(n%10)
		n /= 10
	}
}

func setupKey(setup []string) string { return strings.Join(setup, ";\n") }

// appendQuery appends a simple Query message for sql.
func appendQuery(b []byte, sql string) []byte {
	b = append(b, 'Q', 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], uint32(4+len(sql)+1))
	b = append(b, sql...)
	return append(b, 0)
}

// AcquireTx binds a connection of tt's key for one transaction. It
// prefers an idle connection already in tt's context; otherwise it takes
// any idle one or dials. Nothing is sent: setup holds zero or more simple
// Query messages that the caller must write before (and in the same write
// as) the client's first message, and whose replies (queries
// ReadyForQuery-terminated replies, no rows) it must consume. The
// connection's context is recorded as tt's from here on; if any of those
// replies is an error, the caller must release with ReleaseTx(c, false).
// setup belongs to c and is valid until c is released.
//
// The connection counts against tt.Tenant's cap (Config.MaxConnsPerTenant)
// until released; waiting ends with ErrWaitTimeout after
// Config.WaitTimeout or when ctx ends. Calls with the same tt must not
// overlap (it holds the wait's reusable state): one client, one
// transaction at a time.
func (m *Manager) AcquireTx(ctx context.Context, tt *TxTarget) (c *Conn, setup []byte, queries int, err error) {
	p := tt.p
	if p == nil || p.manager != m {
		var err error
		if p, err = m.poolFor(&tt.Target); err != nil {
			return nil, nil, 0, err
		}
		tt.p = p
	}
	for {
		c, holder, err := p.take(ctx, tt.Tenant, tt.TenantCap, tt.Key(), m.cfg.Load().WaitTimeout, tt.w)
		if err != nil {
			return nil, nil, 0, err
		}
		if c == nil {
			if c, err = m.dial(ctx, p, &tt.Target, holder); err != nil {
				return nil, nil, 0, err
			}
		} else if !c.alive() || m.expired(c, time.Now()) {
			p.destroy(c)
			continue
		}
		c.inject = c.inject[:0]
		queries = 0
		q := tt.q.Value()
		if c.context != q.key && c.context != "" {
			// The switch deallocates every statement (neutralize).
			c.inject = append(c.inject, q.fromOther...)
			fillSeed(c.inject[len(c.inject)-len(q.fromOther):])
			clear(c.statements)
			queries++
		} else {
			if len(c.statements) >= MaxStatementsPerConn {
				c.inject = appendQuery(c.inject, "DEALLOCATE ALL")
				clear(c.statements)
				queries++
			}
			if c.context == "" && len(q.fromNeutral) > 0 {
				c.inject = append(c.inject, q.fromNeutral...)
				queries++
			}
		}
		c.context = q.key
		return c, c.inject, queries, nil
	}
}

// ReleaseTx ends c's binding. With clean, the caller vouches that the
// server's last message was a ReadyForQuery with status 'I', that nothing
// was sent since and nothing is unread: c keeps its context and prepared
// statements and goes to the next waiter (round-robin over tenants) or
// the idle stack, without a round trip. Otherwise c is closed. c must not
// be used afterwards.
func (m *Manager) ReleaseTx(c *Conn, clean bool) {
	p := c.pool
	if clean && !m.expired(c, time.Now()) && p.put(c) {
		return
	}
	p.destroy(c)
}

// dial opens a connection in a slot take granted to holder, freeing the
// slot when it fails.
func (m *Manager) dial(ctx context.Context, p *pool, t *Target, holder *tenantQueue) (*Conn, error) {
	c, err := connect(ctx, m.cfg.Load(), t)
	if err != nil {
		p.km.connectsFail.Inc()
		p.dropSlot(holder)
		return nil, err
	}
	p.km.connectsOK.Inc()
	p.mu.Lock()
	c.pool = p
	c.state = stateActive
	c.holder = holder
	c.gen = p.gen
	p.all[c] = struct{}{}
	p.mu.Unlock()
	return c, nil
}

// HasStatement reports whether the proxy prepared the statement name on
// c; AddStatement and ForgetStatement keep that record. The record is the
// holder's to keep true: it survives ReleaseTx and is cleared by a reset.
func (c *Conn) HasStatement(name string) bool {
	_, ok := c.statements[name]
	return ok
}

// AddStatement records that name was prepared on c.
func (c *Conn) AddStatement(name string) {
	if c.statements == nil {
		c.statements = make(map[string]struct{})
	}
	c.statements[name] = struct{}{}
}

// ForgetStatement removes name from c's record (its Parse failed).
func (c *Conn) ForgetStatement(name string) { delete(c.statements, name) }

// fillIdle dials idle connections up to Config.MinIdle for every pool
// that has served a Target; the reaper calls it.
func (m *Manager) fillIdle(pools []*pool) {
	for _, p := range pools {
		for {
			cfg := m.cfg.Load()
			t := p.reserveIdle(cfg.MinIdle)
			if t == nil {
				break
			}
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
			c, err := m.dial(ctx, p, t, nil)
			cancel()
			if err != nil {
				m.log.Warn("pool: could not open an idle connection", zap.String("database", p.key.database),
					zap.String("user", p.key.user), zap.Error(fmt.Errorf("min idle: %w", err)))
				break
			}
			if !p.put(c) {
				p.destroy(c)
				break
			}
		}
	}
}

// AcquireTxReady is AcquireTx with the setup already run by the pool, for
// a client's startup, which must report the server's settings in the
// tenant's context before any transaction. Errors are AcquireTx's, or a
// *SetupError, or the connection's failure (it was closed).
func (m *Manager) AcquireTxReady(ctx context.Context, tt *TxTarget) (*Conn, error) {
	c, setup, queries, err := m.AcquireTx(ctx, tt)
	if err != nil {
		return nil, err
	}
	if queries == 0 {
		return c, nil
	}
	if deadline, ok := ctx.Deadline(); ok {
		c.netConn.SetDeadline(deadline)
	}
	_, werr := c.netConn.Write(setup)
	var status byte
	var pgErr error
	if werr == nil {
		var e *pgconn.PgError
		status, e, werr = c.awaitReady(queries)
		if e != nil {
			pgErr = e
		}
	}
	switch {
	case werr != nil:
		err = fmt.Errorf("pool: setup: %w", werr)
	case pgErr != nil:
		err = &SetupError{Database: tt.Database, User: tt.User, Err: pgErr}
	case status != 'I':
		err = fmt.Errorf("pool: setup left transaction status %q: %w", status, errProtocol)
	default:
		err = c.netConn.SetDeadline(time.Time{})
	}
	if err != nil {
		m.ReleaseTx(c, false)
		return nil, err
	}
	return c, nil
}

// SetParameterStatus records a ParameterStatus the server sent while the
// proxy relayed, so that ParameterStatuses stays true for the next holder's
// startup. It allocates only when the value changed.
func (c *Conn) SetParameterStatus(name, value []byte) {
	if old, ok := c.params[string(name)]; ok && old == string(value) {
		return
	}
	c.params[string(name)] = string(value)
}

// unknownContext is a context no TxTarget has (a setup key never holds
// a NUL byte, which a Query cannot carry): the next AcquireTx neutralises
// a connection marked with it, whoever takes it.
const unknownContext = "\x00"

// Retarget records that the holder's own statements (a session-level SET
// the proxy tracks for its client) left c in tt's context, so that the
// next holder of tt's key needs no set-up and any other is neutralised
// first. A nil tt means the holder cannot tell what c carries (the
// transaction that ran the SET may have rolled it back in part): the
// next holder is neutralised, whatever its context.
func (c *Conn) Retarget(tt *TxTarget) {
	if tt == nil {
		c.context = unknownContext
		return
	}
	c.context = tt.Key()
}

// Key identifies tt's tenant context: two TxTargets with equal keys leave
// a connection in the same state.
func (tt *TxTarget) Key() string { return tt.q.Value().key }
