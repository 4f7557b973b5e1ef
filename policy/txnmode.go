package policy

import (
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Transaction mode judges what would outlive the client's transaction on
// a server connection that the next transaction, maybe another tenant's,
// gets. Session state a client may want across its transactions pins the
// client to its server connection until it disconnects (proxy/txpin.go):
// temporary objects (unless ON COMMIT DROP) and the temporary schema,
// WITH HOLD cursors, LISTEN, session-level advisory locks and SQL PREPARE.
// What would change the session for everyone after it is refused, with a
// hint to use session mode: set_config in other forms than the one
// tracked (txsets.go), terminating the server connection in any other
// form than the statement the proxy answers itself
// (TxVerdict.Terminates). DEALLOCATE neither pins nor is
// refused, but it may drop the statements the proxy prepares on the
// connection for protocol-level ones, whose record the proxy then clears
// (TxVerdict.Deallocates). It is a second opinion after the policy's
// rules, which already refuse some of these for other reasons.
//
// Session-level SET and RESET of a setting the rules allow are neither
// refused nor pinned: the proxy tracks them (SessionSet) and re-establishes
// them in every later transaction of the client, the way ORMs and drivers
// expect of a session.
//
// The verdict is part of a text's facts: the walk that collects the
// policy's facts asks txnMode about every node, so a statement is parsed
// once for both checks. Text the lexical pass allows needs no parse for
// it either (see fast).

const sessionModeHint = "; connect in session mode (tenant setting pool_mode \"session\") to use it"

// TxVerdict is transaction mode's judgement of a text (Policy.CheckTx).
type TxVerdict struct {
	// Refusal is why the text must not run, "" when it may.
	Refusal string
	// Pin names the first thing in the text that keeps session state on
	// the server connection (e.g. "LISTEN"), "" for none: the client must
	// keep the connection until it disconnects.
	Pin string
	// Deallocates: a statement of the text is SQL DEALLOCATE, which may
	// drop the proxy's own prepared statements on the connection.
	Deallocates bool
	// Sets are the session-level SET and RESET statements the proxy
	// tracks for the client once their transaction commits. The slice is
	// shared: callers must not modify it.
	Sets []SessionSet
	// Terminates: the text is SELECT pg_terminate_backend(pg_backend_pid()),
	// which the proxy answers itself, ending the client's session.
	Terminates bool
}

// CheckTx is Check in transaction mode, with what the text pins, whether
// it deallocates and the settings it changes. None of them is meaningful
// when Refusal is set.
// Allocation-free except on a cache miss, like Check.
func (p *Policy) CheckTx(sql []byte, r Rules) TxVerdict {
	switch v, reason, deallocates := fast(sql); v {
	case fastSafe:
		return TxVerdict{Deallocates: deallocates}
	case fastRefused:
		return TxVerdict{Refusal: reason}
	}
	f, reason := p.rulesVerdict(sql, r)
	if reason != "" {
		return TxVerdict{Refusal: reason}
	}
	return TxVerdict{Refusal: f.txn, Pin: f.pin, Deallocates: f.dealloc, Sets: f.sets, Terminates: f.terminates}
}

// txnMode collects transaction mode's facts from one node of the tree,
// wherever it appears (inside EXPLAIN, PREPARE, CTEs, …): the first
// refusal, the first pin, and whether anything deallocates.
func (a *analyzer) txnMode(n any) {
	if c, ok := n.(*pg_query.FuncCall); ok && slices.Contains(a.exemptCalls, c) {
		return
	}
	if a.f.txn == "" {
		a.f.txn = txnModeNode(n)
	}
	if a.f.pin == "" {
		a.f.pin = txnModePin(n)
	}
	if _, ok := n.(*pg_query.DeallocateStmt); ok {
		a.f.dealloc = true
	}
}

// ReasonUntrackedSet refuses a session-level SET the proxy could not
// carry across transactions: one in a named protocol-level prepared
// statement, whose every execution the proxy would have to follow.
const ReasonUntrackedSet = "session-level SET and RESET are tracked in transaction pooling mode in simple queries and the unnamed statement, not in named prepared statements; use SET LOCAL inside a transaction" + sessionModeHint

// SessionSet is a session-level SET or RESET statement of a client in
// transaction mode: once its transaction commits, the proxy runs SQL in
// front of each later transaction of the client's, on whichever server
// connection it lands.
type SessionSet struct {
	// Name is the setting, lower-case as PostgreSQL names it ("timezone"
	// for SET TIME ZONE): a later SET of the same name replaces this one.
	Name string
	// SQL is the statement as PostgreSQL's deparser prints it, so that it
	// joins other statements safely whatever comments the client wrote.
	SQL string
}

// perTransaction are the settings that PostgreSQL sets afresh for every
// transaction, so that even their session-level SET lasts for one (SET
// TRANSACTION and SET TRANSACTION SNAPSHOT are named like this too).
var perTransaction = map[string]bool{
	"transaction": true, "transaction snapshot": true,
	"transaction_isolation": true, "transaction_read_only": true, "transaction_deferrable": true,
}

// txnModeStatement judges a top-level statement of the text by kind,
// before its nodes, and collects the session settings it changes. SET and
// RESET outlive the transaction only as statements of their own, and so
// does set_config in the one form txsets.go tracks. As a function's SET
// clause the setting lasts for a call, and the ALTER ROLE/DATABASE/SYSTEM
// forms are the policy's to refuse. version is the parse tree's, which
// the deparser checks. It returns the set_config call that the statement
// is, tracked, which transaction mode must not refuse; nil for none.
func (f *facts) txnModeStatement(raw *pg_query.RawStmt, version int32) *pg_query.FuncCall {
	if c, set := setConfigStatement(raw, version); c != nil {
		switch {
		case set.Name == "seed":
			// Not exempt: refused as any set_config of it is.
			return nil
		case !perTransaction[set.Name]:
			f.sets = append(f.sets, set)
		}
		return c
	}
	s := raw.Stmt.GetVariableSetStmt()
	if s == nil || s.IsLocal || perTransaction[strings.ToLower(s.Name)] {
		return nil
	}
	if sets := characteristicsSets(s); sets != nil {
		for _, set := range sets {
			f.sessionSet(set, version)
		}
		return nil
	}
	f.sessionSet(s, version)
	return nil
}

// sessionSet tracks the session-level SET or RESET s, or refuses it when
// replaying it per transaction would not give what the session had.
func (f *facts) sessionSet(s *pg_query.VariableSetStmt, version int32) {
	reason := ""
	switch {
	case strings.EqualFold(s.Name, "seed"):
		// Replayed per transaction it would re-seed random() at each.
		reason = "session-level SET seed is refused in transaction pooling mode; call setseed() inside the transaction"
	case s.Kind == pg_query.VariableSetKind_VAR_SET_CURRENT:
		reason = "SET … FROM CURRENT is refused in transaction pooling mode: the current value is the server connection's, not the session's"
	default:
		if set, ok := trackedSet(s, version); ok {
			f.sets = append(f.sets, set)
			return
		}
		reason = "this form of session-level SET cannot be tracked in transaction pooling mode; use SET LOCAL inside a transaction"
	}
	if f.txn == "" {
		f.txn = reason + sessionModeHint
	}
}

// txnModeNode refuses what no client may leave on a server connection in
// transaction mode.
func txnModeNode(n any) string {
	f, ok := n.(*pg_query.FuncCall)
	if !ok || len(f.Funcname) == 0 {
		return ""
	}
	if selfTerminate(f) {
		return "pg_terminate_backend(pg_backend_pid()) is refused in transaction pooling mode: the server connection is the pool's, not the session's" + sessionModeHint
	}
	if funcName(f) == "set_config" && !localSetConfig(f) {
		return "set_config() can change the session outside the transaction in transaction pooling mode" + sessionModeHint
	}
	return ""
}

// txnModePin names the session state that n leaves on the server
// connection for the client's later transactions, "" for none.
func txnModePin(n any) string {
	switch n := n.(type) {
	case *pg_query.CreateStmt:
		if temporary(n.Relation) && n.Oncommit != pg_query.OnCommitAction_ONCOMMIT_DROP {
			return "a temporary table"
		}
	case *pg_query.IntoClause:
		if temporary(n.Rel) && n.OnCommit != pg_query.OnCommitAction_ONCOMMIT_DROP {
			return "a temporary table"
		}
	case *pg_query.ViewStmt:
		if temporary(n.View) {
			return "a temporary view"
		}
	case *pg_query.CreateSeqStmt:
		if temporary(n.Sequence) {
			return "a temporary sequence"
		}
	case *pg_query.RangeVar:
		// Objects in pg_temp belong to the server connection: the client
		// sees its own only on the connection that has them.
		if strings.HasPrefix(strings.ToLower(n.Schemaname), "pg_temp") {
			return "the temporary schema"
		}
	case *pg_query.DeclareCursorStmt:
		// CURSOR_OPT_HOLD in PostgreSQL's parsenodes.h.
		const cursorOptHold = 0x0020
		if n.Options&cursorOptHold != 0 {
			return "a WITH HOLD cursor"
		}
	case *pg_query.ListenStmt:
		return "LISTEN"
	case *pg_query.PrepareStmt:
		return "SQL PREPARE"
	case *pg_query.FuncCall:
		if len(n.Funcname) == 0 {
			return ""
		}
		// pg_advisory_lock, _shared and pg_try_…: held until unlocked or
		// the session ends; the _xact_ forms end with the transaction.
		if name := funcName(n); strings.HasPrefix(name, "pg_advisory_lock") || strings.HasPrefix(name, "pg_try_advisory_lock") {
			return "a session advisory lock"
		}
	}
	return ""
}

func temporary(r *pg_query.RangeVar) bool {
	return r != nil && (r.Relpersistence == "t" || strings.HasPrefix(strings.ToLower(r.Schemaname), "pg_temp"))
}
