package policy

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/tenantproxy/tenantproxy/router"
)

// setConfig judges set_config(name, value, is_local) as the SET it
// performs, when its statement fixes name: pg_dump, pg_restore and the
// dumps they write start by emptying search_path with set_config, and
// set_config of a named setting reaches nothing SET of it could not. A
// name computed at run time could be any setting, so it is refused.
func (a *analyzer) setConfig(c *pg_query.FuncCall) {
	name, ok := a.settingOf[c]
	if len(c.Args) == 3 {
		if lit := c.Args[0].GetAConst().GetSval(); lit != nil {
			name, ok = lit.GetSval(), true
		}
	}
	if !ok || len(c.Args) != 3 {
		a.f.refuse("set_config() is refused unless its first argument, the setting's name, is a string literal: a name computed at run time could be any setting, the tenant context's included")
		return
	}
	// SET's verdict, its reasons led by the call, so that the client sees
	// what in its text was refused.
	g := &facts{}
	(&analyzer{f: g, level: a.level}).set(&pg_query.VariableSetStmt{Kind: pg_query.VariableSetKind_VAR_SET_VALUE, Name: name, Args: c.Args[1:2]})
	lead := "set_config(" + router.QuoteLiteral(name) + ", …): "
	if g.refused != "" {
		g.refused = lead + g.refused
	}
	for i := range g.why {
		if g.why[i] != "" {
			g.why[i] = lead + g.why[i]
		}
	}
	a.f.merge(g)
	if g.views {
		// CatalogViews holds SET statements to the tenant's limit, not
		// set_config calls.
		a.f.need(classDatabaseWide, lead+reasonIdleSetting)
	}
}

// settingRowCall recognises the one form pg_dump (15.8 and later) uses to
// set a setting the server may not have:
//
//	SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'
//
// and returns the call and the setting it can only set: the WHERE clause
// lets through no row whose name differs from the literal, whatever the
// relation pg_settings resolves to (text equality is byte equality and
// tenants cannot create operators or collations). Any other shape
// returns nil.
func settingRowCall(s *pg_query.SelectStmt) (*pg_query.FuncCall, string) {
	if len(s.TargetList) != 1 || len(s.FromClause) != 1 || s.WithClause != nil {
		return nil, ""
	}
	c := s.TargetList[0].GetResTarget().GetVal().GetFuncCall()
	if c == nil || len(c.Funcname) == 0 || funcName(c) != "set_config" || len(c.Args) != 3 || !isNameColumn(c.Args[0]) {
		return nil, ""
	}
	from := s.FromClause[0].GetRangeVar()
	if from == nil || from.Relname != "pg_settings" || (from.Schemaname != "" && from.Schemaname != "pg_catalog") {
		return nil, ""
	}
	w := s.WhereClause.GetAExpr()
	if w == nil || w.Kind != pg_query.A_Expr_Kind_AEXPR_OP || len(w.Name) != 1 || w.Name[0].GetString_().GetSval() != "=" || !isNameColumn(w.Lexpr) {
		return nil, ""
	}
	lit := w.Rexpr.GetAConst().GetSval()
	if lit == nil {
		return nil, ""
	}
	return c, lit.GetSval()
}

// isNameColumn reports an unqualified reference to the column name.
func isNameColumn(n *pg_query.Node) bool {
	f := n.GetColumnRef().GetFields()
	return len(f) == 1 && f[0].GetString_().GetSval() == "name"
}
