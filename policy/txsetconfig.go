package policy

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// setConfigStatement recognises, for transaction mode, a statement that
// is nothing but a session-level set_config of a setting its text fixes:
// SELECT set_config('name', 'value', false) (Django since 4.2, for its
// time zone; pg_dump and pg_restore, for search_path) and the row form
// settingRowCall recognises (pg_dump's restrict_nonsystem_relation_kind).
// It returns the call and the SessionSet whose SQL is the statement
// itself: replaying it rather than a SET keeps set_config's meaning (an
// empty search_path is not SET's "") and sets nothing on a server without
// the setting, as the original did. c is nil for any other statement.
func setConfigStatement(raw *pg_query.RawStmt, version int32) (c *pg_query.FuncCall, set SessionSet) {
	s := raw.Stmt.GetSelectStmt()
	if s == nil {
		return nil, set
	}
	c, name := settingRowCall(s)
	if c == nil {
		c, name = literalSetConfig(raw.Stmt)
	}
	if c == nil || c.Args[1].GetAConst().GetSval() == nil || !isFalse(c.Args[2]) {
		return nil, set
	}
	sql, err := pg_query.Deparse(&pg_query.ParseResult{Version: version, Stmts: []*pg_query.RawStmt{{Stmt: raw.Stmt}}})
	if err != nil {
		return nil, set
	}
	return c, SessionSet{Name: strings.ToLower(name), SQL: sql}
}

// literalSetConfig recognises SELECT set_config('name', value, is_local)
// with nothing else in the statement, and returns the call and the name.
func literalSetConfig(n *pg_query.Node) (*pg_query.FuncCall, string) {
	c := soleCall(n)
	if c == nil || funcName(c) != "set_config" || len(c.Args) != 3 {
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
