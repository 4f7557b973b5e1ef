package policy

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Transaction mode refuses what would outlive the client's transaction on
// a server connection that the next transaction, maybe another tenant's,
// gets: temporary objects (unless ON COMMIT DROP), WITH HOLD cursors,
// session-level SET and RESET, LISTEN, session-level advisory locks, and
// SQL PREPARE/DEALLOCATE (the latter would also drop the statements the
// proxy prepares on the connection for protocol-level ones). Each refusal
// tells the user to use session mode. It is a second opinion after the
// policy's rules, which already refuse some of these for other reasons.
//
// The verdict is part of a text's facts: the walk that collects the
// policy's facts asks txnModeNode about every node, so a statement is
// parsed once for both checks. Text the lexical pass allows needs no
// parse for it either (see fast).

const sessionModeHint = "; connect in session mode (tenant setting pool_mode \"session\") to use it"

// reasonTxnDeallocate is also the lexical pass's, which sees DEALLOCATE
// lead a statement it otherwise allows.
const reasonTxnDeallocate = "SQL DEALLOCATE is refused in transaction pooling mode: prepared statements on the server connection are the proxy's" + sessionModeHint

// txnModeStatement judges a statement of the text by kind, before its
// nodes: SET and RESET outlive the transaction only as statements of their
// own. As a function's SET clause the setting lasts for a call, and the
// ALTER ROLE/DATABASE/SYSTEM forms are the policy's to refuse.
func txnModeStatement(n *pg_query.Node) string {
	s := n.GetVariableSetStmt()
	if s == nil || s.IsLocal || strings.EqualFold(s.Name, "transaction") {
		return ""
	}
	return "session-level SET and RESET outlive the transaction in transaction pooling mode; use SET LOCAL inside a transaction" + sessionModeHint
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
