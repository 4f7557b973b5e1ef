package policy

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Transaction mode refuses what would outlive the client's transaction on
// a server connection that the next transaction, maybe another tenant's,
// gets and that the proxy cannot carry for the client: temporary objects
// (unless ON COMMIT DROP), WITH HOLD cursors, LISTEN, session-level
// advisory locks, and SQL PREPARE/DEALLOCATE (the latter would also drop
// the statements the proxy prepares on the connection for protocol-level
// ones). Each refusal tells the user to use session mode. It is a second
// opinion after the policy's rules, which already refuse some of these for
// other reasons.
//
// Session-level SET and RESET of a setting the rules allow are not
// refused: the proxy tracks them (SessionSet) and re-establishes them in
// every later transaction of the client, the way ORMs and drivers expect
// of a session.
//
// The verdict is part of a text's facts: the walk that collects the
// policy's facts asks txnModeNode about every node, so a statement is
// parsed once for both checks. Text the lexical pass allows needs no
// parse for it either (see fast).

const sessionModeHint = "; connect in session mode (tenant setting pool_mode \"session\") to use it"

// reasonTxnDeallocate is also the lexical pass's, which sees DEALLOCATE
// lead a statement it otherwise allows.
const reasonTxnDeallocate = "SQL DEALLOCATE is refused in transaction pooling mode: prepared statements on the server connection are the proxy's" + sessionModeHint

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
// RESET outlive the transaction only as statements of their own. As a
// function's SET clause the setting lasts for a call, and the ALTER
// ROLE/DATABASE/SYSTEM forms are the policy's to refuse. version is the
// parse tree's, which the deparser checks.
func (f *facts) txnModeStatement(raw *pg_query.RawStmt, version int32) {
	s := raw.Stmt.GetVariableSetStmt()
	if s == nil || s.IsLocal || perTransaction[strings.ToLower(s.Name)] {
		return
	}
	reason := ""
	switch {
	case strings.EqualFold(s.Name, "seed"):
		// Replayed per transaction it would re-seed random() at each.
		reason = "session-level SET seed is refused in transaction pooling mode; call setseed() inside the transaction"
	case s.Kind == pg_query.VariableSetKind_VAR_SET_CURRENT:
		reason = "SET … FROM CURRENT is refused in transaction pooling mode: the current value is the server connection's, not the session's"
	default:
		sql, err := pg_query.Deparse(&pg_query.ParseResult{Version: version, Stmts: []*pg_query.RawStmt{{Stmt: raw.Stmt}}})
		if err == nil {
			f.sets = append(f.sets, SessionSet{Name: strings.ToLower(s.Name), SQL: sql})
			return
		}
		reason = "this form of session-level SET cannot be tracked in transaction pooling mode; use SET LOCAL inside a transaction"
	}
	if f.txn == "" {
		f.txn = reason + sessionModeHint
	}
}

// txnModeNode judges one node of the tree, wherever it appears (inside
// EXPLAIN, PREPARE, CTEs, …).
func txnModeNode(n any) string {
	switch n := n.(type) {

	case *pg_query.CreateStmt:
		if temporary(n.Relation) && n.Oncommit != pg_query.OnCommitAction_ONCOMMIT_DROP {
			return "temporary tables outlive the transaction in transaction pooling mode; create them with ON COMMIT DROP" + sessionModeHint
		}
	case *pg_query.IntoClause:
		if temporary(n.Rel) && n.OnCommit != pg_query.OnCommitAction_ONCOMMIT_DROP {
			return "temporary tables outlive the transaction in transaction pooling mode; create them with ON COMMIT DROP" + sessionModeHint
		}
	case *pg_query.ViewStmt:
		if temporary(n.View) {
			return "temporary views outlive the transaction in transaction pooling mode" + sessionModeHint
		}
	case *pg_query.CreateSeqStmt:
		if temporary(n.Sequence) {
			return "temporary sequences outlive the transaction in transaction pooling mode" + sessionModeHint
		}
	case *pg_query.RangeVar:
		if strings.HasPrefix(strings.ToLower(n.Schemaname), "pg_temp") {
			return "the temporary schema belongs to the server connection, not to the client, in transaction pooling mode" + sessionModeHint
		}
	case *pg_query.DeclareCursorStmt:
		// CURSOR_OPT_HOLD in PostgreSQL's parsenodes.h.
		const cursorOptHold = 0x0020
		if n.Options&cursorOptHold != 0 {
			return "WITH HOLD cursors outlive the transaction in transaction pooling mode" + sessionModeHint
		}
	case *pg_query.ListenStmt:
		return "LISTEN needs a server connection of its own, which transaction pooling mode does not keep" + sessionModeHint
	case *pg_query.PrepareStmt:
		return "SQL PREPARE outlives the transaction in transaction pooling mode; use protocol-level prepared statements (the driver's), which the proxy keeps per client" + sessionModeHint
	case *pg_query.DeallocateStmt:
		return reasonTxnDeallocate
	case *pg_query.FuncCall:
		if len(n.Funcname) == 0 {
			return ""
		}
		name := funcName(n)
		if selfTerminate(n) {
			return "pg_terminate_backend(pg_backend_pid()) is refused in transaction pooling mode: the server connection is the pool's, not the session's" + sessionModeHint
		}
		if strings.HasPrefix(name, "pg_advisory_lock") || strings.HasPrefix(name, "pg_try_advisory_lock") {
			return "session-level advisory locks outlive the transaction in transaction pooling mode; use pg_advisory_xact_lock" + sessionModeHint
		}
		if name == "set_config" {
			return "set_config() can change the session outside the transaction in transaction pooling mode" + sessionModeHint
		}
	}
	return ""
}

func temporary(r *pg_query.RangeVar) bool {
	return r != nil && (r.Relpersistence == "t" || strings.HasPrefix(strings.ToLower(r.Schemaname), "pg_temp"))
}
