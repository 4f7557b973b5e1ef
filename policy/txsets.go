package policy

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// SET SESSION CHARACTERISTICS AS TRANSACTION … (SQLAlchemy's
// set_isolation_level, pgJDBC's setTransactionIsolation and setReadOnly),
// which ORMs send on connect, is tracked in transaction mode as the SETs
// of default_transaction_isolation, _read_only and _deferrable it amounts
// to: tracked whole under one name, a later READ ONLY would replace an
// earlier ISOLATION LEVEL that PostgreSQL keeps. A lone set_config is
// tracked as itself (txsetconfig.go).

// characteristicsSets returns the SETs of default_transaction_* that a
// SET SESSION CHARACTERISTICS statement amounts to, nil for any other
// statement.
func characteristicsSets(s *pg_query.VariableSetStmt) []*pg_query.VariableSetStmt {
	if s.Kind != pg_query.VariableSetKind_VAR_SET_MULTI || !strings.EqualFold(s.Name, "session characteristics") {
		return nil
	}
	var sets []*pg_query.VariableSetStmt
	for _, a := range s.Args {
		d := a.GetDefElem()
		if d == nil {
			return nil
		}
		sets = append(sets, &pg_query.VariableSetStmt{
			Kind: pg_query.VariableSetKind_VAR_SET_VALUE,
			Name: "default_" + d.Defname,
			Args: []*pg_query.Node{d.Arg},
		})
	}
	return sets
}

// soleCall returns the function call that statement n consists of
// (SELECT f(…) and nothing else), nil for any other statement.
func soleCall(n *pg_query.Node) *pg_query.FuncCall {
	s := n.GetSelectStmt()
	if s == nil || len(s.TargetList) != 1 || s.FromClause != nil || s.WhereClause != nil || s.WithClause != nil ||
		s.GroupClause != nil || s.HavingClause != nil || s.SortClause != nil || s.LimitCount != nil ||
		s.LimitOffset != nil || s.DistinctClause != nil || s.Op != pg_query.SetOperation_SETOP_NONE {
		return nil
	}
	c := s.TargetList[0].GetResTarget().GetVal().GetFuncCall()
	if c == nil || len(c.Funcname) == 0 || c.AggFilter != nil || c.Over != nil {
		return nil
	}
	return c
}

// selfTermination marks a text that is the one statement SELECT
// pg_terminate_backend(pg_backend_pid()): the client ending its own
// session, which the proxy answers as PostgreSQL does (FATAL 57P01, the
// connection closed) without sending it to the pool's connection. In any
// other text the call stays refused. It returns the call, which
// transaction mode must not refuse; nil for none.
func (f *facts) selfTermination(res *pg_query.ParseResult) *pg_query.FuncCall {
	if len(res.Stmts) != 1 {
		return nil
	}
	c := soleCall(res.Stmts[0].Stmt)
	if c == nil || !selfTerminate(c) {
		return nil
	}
	f.terminates = true
	return c
}

// localSetConfig reports set_config(…, …, true): the setting lasts until
// the transaction ends, like SET LOCAL.
func localSetConfig(c *pg_query.FuncCall) bool {
	if len(c.Args) != 3 {
		return false
	}
	b := c.Args[2].GetAConst().GetBoolval()
	return b != nil && b.Boolval
}

// trackedSet is the SessionSet of s as PostgreSQL's deparser prints it,
// checked by parsing the result again: it must be that one SET of the
// same setting, so that no name or value, however spelled, can make the
// statement replayed in front of the client's transactions say more.
func trackedSet(s *pg_query.VariableSetStmt, version int32) (SessionSet, bool) {
	sql, err := pg_query.Deparse(&pg_query.ParseResult{Version: version, Stmts: []*pg_query.RawStmt{{Stmt: &pg_query.Node{Node: &pg_query.Node_VariableSetStmt{VariableSetStmt: s}}}}})
	if err != nil {
		return SessionSet{}, false
	}
	res, err := pg_query.Parse(sql)
	if err != nil || len(res.Stmts) != 1 {
		return SessionSet{}, false
	}
	again := res.Stmts[0].Stmt.GetVariableSetStmt()
	if again == nil || again.Kind != s.Kind || again.IsLocal || !strings.EqualFold(again.Name, s.Name) {
		return SessionSet{}, false
	}
	return SessionSet{Name: strings.ToLower(s.Name), SQL: sql}, true
}

// DeallocateTarget reads a text that is one SQL DEALLOCATE statement:
// the prepared statement it names, or all. ok is false for any other text.
// It parses: call it only for text whose verdict Deallocates.
func DeallocateTarget(sql []byte) (name string, all, ok bool) {
	res, err := pg_query.Parse(string(sql))
	if err != nil || len(res.Stmts) != 1 {
		return "", false, false
	}
	d := res.Stmts[0].Stmt.GetDeallocateStmt()
	if d == nil {
		return "", false, false
	}
	return d.Name, d.Isall, true
}
