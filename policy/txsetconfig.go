package policy

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// setConfigStatement tracks, in transaction mode, a statement that is
// nothing but a session-level set_config of a setting its text fixes, as
// a SessionSet whose SQL is the statement itself: pg_dump and pg_restore
// set search_path with SELECT set_config('search_path', ”, false), and
// pg_dump restrict_nonsystem_relation_kind with the row form
// settingRowCall recognises. Replaying the statement rather than a SET
// keeps set_config's meaning (an empty search_path is not SET's "") and
// sets nothing on a server without the setting, as the original did. It
// returns the call, whose transaction-mode refusal (txnModeNode) the
// tracking replaces, or nil for any other statement.
func (f *facts) setConfigStatement(raw *pg_query.RawStmt, version int32) *pg_query.FuncCall {
	s := raw.Stmt.GetSelectStmt()
	if s == nil {
		return nil
	}
	c, name := settingRowCall(s)
	if c == nil {
		c, name = literalSetConfig(s)
	}
	if c == nil || c.Args[1].GetAConst().GetSval() == nil || !isFalse(c.Args[2]) {
		return nil
	}
	sql, err := pg_query.Deparse(&pg_query.ParseResult{Version: version, Stmts: []*pg_query.RawStmt{{Stmt: raw.Stmt}}})
	if err != nil {
		return nil
	}
	f.sets = append(f.sets, SessionSet{Name: strings.ToLower(name), SQL: sql})
	return c
}

// literalSetConfig recognises SELECT set_config('name', value, is_local)
// with nothing else in the statement, and returns the call and the name.
func literalSetConfig(s *pg_query.SelectStmt) (*pg_query.FuncCall, string) {
	if len(s.TargetList) != 1 || len(s.FromClause) != 0 || s.WhereClause != nil || s.WithClause != nil ||
		len(s.GroupClause) != 0 || s.HavingClause != nil || len(s.SortClause) != 0 || s.LimitCount != nil || s.LimitOffset != nil ||
		s.Op != pg_query.SetOperation_SETOP_NONE {
		return nil, ""
	}
	c := s.TargetList[0].GetResTarget().GetVal().GetFuncCall()
	if c == nil || len(c.Funcname) == 0 || funcName(c) != "set_config" || len(c.Args) != 3 {
		return nil, ""
	}
	name := c.Args[0].GetAConst().GetSval()
	if name == nil {
		return nil, ""
	}
	return c, name.GetSval()
}

// isFalse reports the constant false (set_config's is_local of a
// session-level setting).
func isFalse(n *pg_query.Node) bool {
	b := n.GetAConst().GetBoolval()
	return b != nil && !b.GetBoolval() && !n.GetAConst().GetIsnull()
}
