package policy

import (
	"bytes"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Read-only tenants. A tenant over its storage quota is read-only: the
// proxy starts each of its transactions read-only in PostgreSQL
// (default_transaction_read_only, proxy/quota.go), which no function,
// view or protocol detour can write past, and asks ReadOnly about each
// text the tenant sends, to refuse early and with a hint what PostgreSQL
// would refuse anyway (Write), to refuse what would make a transaction
// read-write again (Escape), and to let through, read-write, what only
// deletes (Frees), so the tenant can get back under its quota.

// ReadOnlyFacts are what a text does that matters while its tenant is
// read-only.
type ReadOnlyFacts struct {
	// Write names the first statement that writes (INSERT, UPDATE,
	// MERGE, COPY FROM, SELECT INTO, CREATE …), "" for none. Writes the
	// text does not show (a function's, an EXECUTE's) PostgreSQL refuses.
	Write string
	// Escape is why the text could make a transaction read-write: SET or
	// RESET of transaction_read_only or default_transaction_read_only
	// (set_config too), SET TRANSACTION / SET SESSION CHARACTERISTICS /
	// BEGIN / START TRANSACTION … READ WRITE, CALL and DO (procedural
	// code may COMMIT and go on in a new transaction), and a COMMIT or
	// ROLLBACK followed by more statements in the same text; "" for none.
	Escape string
	// Deletes: every statement is a DELETE, TRUNCATE or DROP. Frees:
	// besides, none calls a function or has a sub-query or WITH, so the
	// text only removes data and may run read-write.
	Deletes, Frees bool
}

// readOnlyFacts are ReadOnlyFacts in the making (facts.ro).
type readOnlyFacts struct {
	write, escape string
	// freeing: every statement so far deletes; calls: the tree calls a
	// function or has a sub-query or CTE; readWrite: the escape is a
	// setting or BEGIN … READ WRITE (PreparedEscape).
	freeing, calls, readWrite bool
}

const reasonReadOnlyInFunction = "a function that changes transaction_read_only or default_transaction_read_only is refused: the proxy sets them for tenants over their storage quota"

// ReadOnly returns what sql does that matters to a read-only tenant. It
// parses sql on a cache miss (the lexical pass does not know it), so it
// is for read-only tenants only. A text too large to parse counts as a
// write.
func (p *Policy) ReadOnly(sql []byte) ReadOnlyFacts {
	if len(sql) > MaxParsedStatement {
		return ReadOnlyFacts{Write: "a statement over 1 MiB"}
	}
	f := p.factsOf(sql)
	deletes := f.ro.freeing && f.ro.write == "" && f.ro.escape == ""
	return ReadOnlyFacts{Write: f.ro.write, Escape: f.ro.escape, Deletes: deletes, Frees: deletes && !f.ro.calls}
}

// PreparedEscape is the refusal, for every tenant and at all times, of a
// Parse of sql that would make a transaction read-write (Escape's SET,
// RESET and set_config forms, BEGIN … READ WRITE), "" for none. A
// prepared statement runs at a Bind, which shows no SQL: prepared while
// its tenant was writable, it could run first thing in a read-only
// transaction, before PostgreSQL's first snapshot, where PostgreSQL still
// lets transaction_read_only change. Those statements run as simple
// queries. Only texts that could spell one (the word "read", a backslash
// escape, a Unicode escape) are parsed, so other Parses cost a scan.
func (p *Policy) PreparedEscape(sql []byte) string {
	if !containsFold(sql, "read") && !bytes.ContainsAny(sql, `\&`) {
		return ""
	}
	if len(sql) <= MaxParsedStatement && p.factsOf(sql).ro.readWrite {
		return reasonPreparedReadWrite
	}
	return ""
}

const reasonPreparedReadWrite = "preparing a statement that changes transaction_read_only or default_transaction_read_only, or begins a READ WRITE transaction, is refused: it could make a transaction of a tenant over its storage quota read-write; send it as a simple query"

// readOnlyStatement classifies top-level statement n; last says it ends
// the text.
func (a *analyzer) readOnlyStatement(n *pg_query.Node, first, last bool) {
	ro := &a.f.ro
	if first {
		ro.freeing = true
	}
	switch s := n.Node.(type) {
	case *pg_query.Node_DeleteStmt, *pg_query.Node_TruncateStmt, *pg_query.Node_DropStmt:
		return
	case *pg_query.Node_TransactionStmt:
		switch s.TransactionStmt.Kind {
		case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT, pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:
			if !last && ro.escape == "" {
				ro.escape = "a COMMIT or ROLLBACK followed by more statements in one query is refused while the tenant is read-only: the statements after it would start a transaction of their own"
			}
		}
		if readWriteOption(s.TransactionStmt.Options) {
			ro.readWrite = true
			if ro.escape == "" {
				ro.escape = "BEGIN READ WRITE is refused while the tenant is read-only"
			}
		}
	case *pg_query.Node_CallStmt, *pg_query.Node_DoStmt:
		if ro.escape == "" {
			ro.escape = statementName(n) + " is refused while the tenant is read-only: procedural code may commit and go on in a transaction of its own"
		}
	case *pg_query.Node_SelectStmt:
		if s.SelectStmt.IntoClause != nil && ro.write == "" {
			ro.write = "SELECT INTO"
		}
	case *pg_query.Node_CopyStmt:
		if s.CopyStmt.IsFrom && ro.write == "" {
			ro.write = "COPY FROM"
		}
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_MergeStmt:
		if ro.write == "" {
			ro.write = strings.ToUpper(statementName(n))
		}
	case *pg_query.Node_VariableShowStmt, *pg_query.Node_VariableSetStmt, *pg_query.Node_ExecuteStmt,
		*pg_query.Node_DeallocateStmt, *pg_query.Node_FetchStmt, *pg_query.Node_ClosePortalStmt,
		*pg_query.Node_ConstraintsSetStmt, *pg_query.Node_PrepareStmt, *pg_query.Node_ExplainStmt,
		*pg_query.Node_DeclareCursorStmt, *pg_query.Node_ListenStmt, *pg_query.Node_UnlistenStmt,
		*pg_query.Node_NotifyStmt, *pg_query.Node_LockStmt, *pg_query.Node_DiscardStmt, *pg_query.Node_VacuumStmt:
		// Not writes by themselves; PostgreSQL refuses what they would
		// write in a read-only transaction.
	default:
		if ro.write == "" {
			ro.write = statementName(n)
		}
	}
	ro.freeing = false
}

// readOnlySetting notes a SET or RESET of name (lower case) that could
// make a transaction read-write: in a function, which may run after the
// tenant became read-only, it is refused for every tenant.
func (a *analyzer) readOnlySetting(s *pg_query.VariableSetStmt, name string) {
	escapes := false
	switch name {
	case "transaction_read_only", "default_transaction_read_only":
		escapes = s.Kind != pg_query.VariableSetKind_VAR_SET_VALUE || len(s.Args) != 1 || !isOn(constString(s.Args[0]))
	case "transaction", "session characteristics":
		escapes = readWriteOption(s.Args)
	}
	if !escapes {
		return
	}
	if a.level > 0 {
		a.f.refuse(reasonReadOnlyInFunction)
	}
	a.f.ro.readWrite = true
	if a.f.ro.escape == "" {
		a.f.ro.escape = "changing " + name + " is refused while the tenant is read-only: the proxy keeps its transactions read-only until it is back under its storage quota"
	}
}

// readWriteOption reports whether transaction options (BEGIN, SET
// TRANSACTION) ask for READ WRITE.
func readWriteOption(opts []*pg_query.Node) bool {
	for _, o := range opts {
		d := o.GetDefElem()
		if c := d.GetArg().GetAConst(); d.GetDefname() == "transaction_read_only" && c.GetIval() != nil && c.GetIval().GetIval() == 0 {
			return true
		}
	}
	return false
}
