package policy

import (
	"strconv"
	"strings"
	"time"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tenantproxy/tenantproxy/migrations"
)

// Where tenants share a database (the shared and schema tiers), the
// estimates in pg_class, the size functions and pg_db_role_setting are
// revoked from them (migrations.Harden), and tools read them anyway:
// pg_dump, pg_restore, psql's \d+, \dt+ and \l+. CatalogViews puts the
// stand-ins of migrations.CatalogSchema in their place, which answer with
// the caller's own relations' figures and nothing of anyone else's. In a
// database-tier tenant's own database only pg_db_role_setting is revoked
// (it is the server's, every database's and role's), and RoleSettings
// puts that database's stand-in in its place, for pg_dump's archive
// formats. The
// revocations stay what isolates: a reference the rewrite misses (a
// spelling it does not recognise, SQL assembled inside the server) fails
// with PostgreSQL's permission error, and reveals nothing either.
//
// The same rewrite holds the tenant's limit on idle transactions in
// session mode, where PostgreSQL times them
// (idle_in_transaction_session_timeout, which the proxy sets): pg_dump
// and pg_restore begin by setting it to 0, and a tenant sharing the
// database must not hold its locks and vacuum horizon without end. A
// client's SET of it is accepted and sent with the smaller of its value
// and the limit (0, no limit, is the limit), so the server never times
// idle transactions more leniently than the tenant's limit. Transaction
// mode times them in the proxy, whatever the setting: there the SET is
// tracked like any other.

const reasonIdleSetting = "changing idle_in_transaction_session_timeout other than by SET … = value is refused for this tenant: the proxy holds it to the tenant's limit, so that an idle transaction cannot hold the locks and vacuum horizon of a database other tenants share"

// StandIns reports whether r's tenant's statements get CatalogViews'
// stand-ins: where the tenant shares its database with others, i.e. may
// not reach database-wide state. The zero Rules (the strictest, which a
// database-tier tenant with malformed settings gets) have them too: in a
// database without migrations.CatalogSchema a rewritten statement then
// fails, where the policy would otherwise have to let pg_database_size
// through unrewritten. The others get RoleSettings' stand-in.
func (r Rules) StandIns() bool { return !r.DatabaseWide }

// catalogRelation notes a relation the rewrite stands in for. The
// settings stored per role are hidden in every database, the tenant's own
// included, and have a stand-in in every tier: CatalogViews' where the
// tenant shares its database, RoleSettings' in its own.
func (a *analyzer) catalogRelation(rel *pg_query.RangeVar) {
	if rel.Schemaname != "" && !strings.EqualFold(rel.Schemaname, "pg_catalog") {
		return
	}
	switch strings.ToLower(rel.Relname) {
	case "pg_db_role_setting":
		a.f.views = true
	case "pg_class":
		// Whether the statement reads the estimates is standIn's to
		// find, for the statements a.stmt names (introspection that
		// reads none, psql's and ORMs', is then not parsed again).
		a.f.views = a.f.views || (a.stmt != nil && readsEstimates(a.stmt))
	}
}

// sizeCall notes a call of a size function, which the rewrite stands in
// for. pg_database_size reaches databases other than the tenant's own, so
// where no rewrite applies it is refused.
func (a *analyzer) sizeCall(name string) bool {
	if _, ok := migrations.SizeFunctions[name]; !ok {
		return false
	}
	a.f.views = true
	if name == "pg_database_size" {
		a.f.viewless = name + "() is refused: " + whyServerWide
	}
	return true
}

// idleSetting judges a SET of idle_in_transaction_session_timeout: a value
// the rewrite can hold to the limit is allowed where the rewrite applies,
// and every other form (RESET, DEFAULT, FROM CURRENT) needs the database
// to be the tenant's own.
func (a *analyzer) idleSetting(s *pg_query.VariableSetStmt) {
	if s.Kind == pg_query.VariableSetKind_VAR_SET_VALUE && len(s.Args) == 1 && s.Args[0].GetAConst() != nil {
		a.f.views = true
		return
	}
	a.f.need(classDatabaseWide, reasonIdleSetting)
}

// CatalogViews returns sql with the stand-ins of migrations.CatalogSchema
// in place of what they stand for: a call of the stand-in function under
// the same name for every reference to pg_db_role_setting, and to
// pg_class in a statement that reads its estimates (unqualified or
// pg_catalog's); the stand-in for every call of a size function; and,
// when idleLimit is positive, every SET of
// idle_in_transaction_session_timeout held to idleLimit. It returns nil
// when sql has none of them. Only the statements that change are
// generated again from their parse; the others keep their bytes. Call it
// only for text Check allowed, of a tenant that shares its database; sql
// is not retained.
func (p *Policy) CatalogViews(sql []byte, idleLimit time.Duration) []byte {
	return p.standIns(sql, func(n *pg_query.Node) bool { return standIn(n, idleLimit) })
}

// RoleSettings returns sql with a call of the database tier's stand-in
// for pg_db_role_setting (migrations.DatabaseProxySchema's, which shows
// the rows of the tenant's own database and role only) in place of every
// reference to it, nil when sql has none. Nothing else in the tenant's
// own database needs a stand-in: its sizes and estimates are its own.
// Call it only for text Check allowed, of a database-tier tenant; sql is
// not retained.
func (p *Policy) RoleSettings(sql []byte) []byte {
	return p.standIns(sql, func(n *pg_query.Node) bool {
		changed := false
		visit(n.ProtoReflect(), func(m any) {
			if v, ok := m.(*pg_query.Node); ok {
				changed = relationFunction(v, false, migrations.DatabaseProxySchema) || changed
			}
		})
		return changed
	})
}

// standIns returns sql with every statement that edit changes generated
// again from its edited parse, nil when edit changes none (or sql names
// nothing a stand-in replaces).
func (p *Policy) standIns(sql []byte, edit func(*pg_query.Node) bool) []byte {
	if !hasCatalogWord(sql) {
		return nil
	}
	if f, ok := p.cached(sql); ok && !f.views {
		return nil
	} else if !ok {
		if v, _, _ := fast(sql); v == fastSafe || len(sql) > MaxParsedStatement {
			return nil
		}
	}
	res, err := pg_query.Parse(string(sql))
	p.parses.Add(1)
	if err != nil {
		return nil
	}
	var out []byte
	done := 0
	for _, s := range res.Stmts {
		if !edit(s.Stmt) {
			continue
		}
		stmt, err := pg_query.Deparse(&pg_query.ParseResult{Version: res.Version, Stmts: []*pg_query.RawStmt{{Stmt: s.Stmt}}})
		if err != nil {
			// PostgreSQL then refuses the original, as the revocations
			// have it.
			continue
		}
		out, done = splice(out, sql, done, s, stmt)
	}
	if out == nil {
		return nil
	}
	return append(out, sql[done:]...)
}

// standIn edits the tree of statement n in place, reporting whether it
// changed anything. pg_class is replaced only in a statement that reads
// its estimates by name or with a star: the others (psql's, ORMs'
// introspection) are sent as they were.
func standIn(n *pg_query.Node, idleLimit time.Duration) bool {
	estimates := readsEstimates(n)
	changed := false
	visit(n.ProtoReflect(), func(m any) {
		switch v := m.(type) {
		case *pg_query.Node:
			changed = relationFunction(v, estimates, migrations.CatalogSchema) || changed
		case *pg_query.FuncCall:
			changed = sizeFunctionOf(v) || changed
		case *pg_query.VariableSetStmt:
			changed = holdIdleSetting(v, idleLimit) || changed
		}
	})
	return changed
}

// readsEstimates reports whether statement n names a column of pg_class's
// estimates, or a star.
func readsEstimates(n *pg_query.Node) bool {
	found := false
	visit(n.ProtoReflect(), func(m any) {
		c, ok := m.(*pg_query.ColumnRef)
		if !ok || len(c.Fields) == 0 {
			return
		}
		last := c.Fields[len(c.Fields)-1]
		if last.GetAStar() != nil {
			found = true
		}
		for _, e := range migrations.HiddenEstimates {
			if strings.EqualFold(last.GetString_().GetSval(), e.Column) {
				found = true
			}
		}
	})
	return found
}

// relationFunction turns n, a reference to pg_db_role_setting (or to
// pg_class, when estimates), into a call of its stand-in in schema under
// the name the query knows it by.
func relationFunction(n *pg_query.Node, estimates bool, schema string) bool {
	rel := n.GetRangeVar()
	if rel == nil || (rel.Schemaname != "" && !strings.EqualFold(rel.Schemaname, "pg_catalog")) {
		return false
	}
	name := strings.ToLower(rel.Relname)
	function := ""
	switch {
	case name == "pg_class" && estimates:
		function = migrations.ClassFunction
	case name == "pg_db_role_setting":
		function = migrations.RoleSettingFunction
	default:
		return false
	}
	alias := rel.Alias
	if alias == nil {
		alias = &pg_query.Alias{Aliasname: name}
	}
	call := &pg_query.FuncCall{
		Funcname:   []*pg_query.Node{pg_query.MakeStrNode(schema), pg_query.MakeStrNode(function)},
		Funcformat: pg_query.CoercionForm_COERCE_EXPLICIT_CALL,
		Location:   -1,
	}
	n.Node = &pg_query.Node_RangeFunction{RangeFunction: &pg_query.RangeFunction{
		Functions: []*pg_query.Node{pg_query.MakeListNode([]*pg_query.Node{{Node: &pg_query.Node_FuncCall{FuncCall: call}}, {}})},
		Alias:     alias,
	}}
	return true
}

// sizeFunctionOf points a call of a size function at its stand-in.
func sizeFunctionOf(c *pg_query.FuncCall) bool {
	if len(c.Funcname) == 0 || len(c.Funcname) > 2 {
		return false
	}
	name := funcName(c)
	if _, ok := migrations.SizeFunctions[name]; !ok {
		return false
	}
	if len(c.Funcname) == 2 && !strings.EqualFold(c.Funcname[0].GetString_().GetSval(), "pg_catalog") {
		return false
	}
	c.Funcname = []*pg_query.Node{pg_query.MakeStrNode(migrations.CatalogSchema), pg_query.MakeStrNode(strings.TrimPrefix(name, "pg_"))}
	return true
}

// holdIdleSetting sets the value of a SET of
// idle_in_transaction_session_timeout to the smaller of its own and limit
// (no change for limit <= 0, where the server has no limit to keep).
func holdIdleSetting(s *pg_query.VariableSetStmt, limit time.Duration) bool {
	if limit <= 0 || !strings.EqualFold(s.Name, "idle_in_transaction_session_timeout") || s.Kind != pg_query.VariableSetKind_VAR_SET_VALUE || len(s.Args) != 1 {
		return false
	}
	held := limit.Milliseconds()
	if v, ok := milliseconds(s.Args[0]); ok && v > 0 && v < held {
		held = v
	}
	s.Args[0] = pg_query.MakeAConstIntNode(held, -1)
	return true
}

// timeUnits are PostgreSQL's units of time settings, in milliseconds.
var timeUnits = map[string]float64{"us": 0.001, "ms": 1, "s": 1000, "min": 60000, "h": 3600000, "d": 86400000}

// milliseconds reads a SET value of a time setting in milliseconds, its
// default unit: a number, or a string of a number and a unit.
func milliseconds(n *pg_query.Node) (int64, bool) {
	c := n.GetAConst()
	switch {
	case c.GetIval() != nil:
		return int64(c.GetIval().GetIval()), true
	case c.GetFval() != nil:
		f, err := strconv.ParseFloat(c.GetFval().GetFval(), 64)
		return int64(f), err == nil
	case c.GetSval() != nil:
		v := strings.TrimSpace(c.GetSval().GetSval())
		i := strings.IndexFunc(v, func(r rune) bool { return (r < '0' || r > '9') && r != '.' && r != '-' })
		unit := 1.0
		if i >= 0 {
			u, ok := timeUnits[strings.TrimSpace(v[i:])]
			if !ok {
				return 0, false
			}
			v, unit = v[:i], u
		}
		f, err := strconv.ParseFloat(v, 64)
		return int64(f * unit), err == nil
	}
	return 0, false
}

// visit calls fn with every message of the tree under m.
func visit(m protoreflect.Message, fn func(any)) {
	fn(m.Interface())
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind || fd.IsMap():
		case fd.IsList():
			l := val.List()
			for i := range l.Len() {
				visit(l.Get(i).Message(), fn)
			}
		default:
			visit(val.Message(), fn)
		}
		return true
	})
}

// hasCatalogWord reports whether sql may name what CatalogViews rewrites
// (pg_class, pg_db_role_setting, a size function,
// idle_in_transaction_session_timeout), in one pass without allocating:
// each name has an underscore, where the comparisons start.
func hasCatalogWord(sql []byte) bool {
	for i, c := range sql {
		if c != '_' {
			continue
		}
		before, after := sql[:i], sql[i+1:]
		if hasPrefixFold(after, "size") || (hasSuffixFold(before, "pg") && hasPrefixFold(after, "class")) ||
			(hasSuffixFold(before, "role") && hasPrefixFold(after, "setting")) || (hasSuffixFold(before, "idle") && hasPrefixFold(after, "in_transaction")) {
			return true
		}
	}
	return false
}

// hasSuffixFold reports whether b ends in the lower-case ASCII word w, in
// any case.
func hasSuffixFold(b []byte, w string) bool {
	return len(b) >= len(w) && hasPrefixFold(b[len(b)-len(w):], w)
}
