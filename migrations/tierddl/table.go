package tierddl

import (
	"fmt"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// createTable adds the tenant column first, rewrites keys, foreign keys and
// ids per tenant, and follows the table with its isolation (forced,
// fail-closed row-level security) and the serving role's grant.
func createTable(n *pg_query.Node, c *pg_query.CreateStmt) ([]*pg_query.Node, error) {
	switch {
	case c.Relation.Relpersistence == "t":
		return nil, refusal("a temporary table lasts only for the migration's session, so it is no part of the schema")
	case c.Partbound != nil || c.Partspec != nil:
		return nil, refusal("partitioned tables are not supported in the shared tier: each partition would need its own isolation, and the partition key its place in every key")
	case len(c.InhRelations) > 0:
		return nil, refusal("INHERITS: queries on a parent also read its children's rows under the parent's policies, which the tool does not follow")
	case c.OfTypename != nil:
		return nil, refusal("CREATE TABLE OF a type takes its columns from the type, so the tool cannot add " + TenantColumn)
	case c.IfNotExists:
		return nil, refusal("CREATE TABLE IF NOT EXISTS would skip an existing table without the isolation the tool adds")
	}
	stmts, err := parseStmts("CREATE TABLE t (" + TenantColumn + " text NOT NULL DEFAULT " + tenantExpr + ")")
	if err != nil {
		return nil, err
	}
	// The tenant column goes after the table's own columns, so that an
	// INSERT without a column list fills them as written and leaves it
	// to its default.
	tenantColumn := stmts[0].GetCreateStmt().TableElts
	var elts []*pg_query.Node
	cols := columns{rel: c.Relation}
	for _, e := range c.TableElts {
		switch x := e.Node.(type) {
		case *pg_query.Node_ColumnDef:
			if err := cols.add(x.ColumnDef); err != nil {
				return nil, err
			}
		case *pg_query.Node_Constraint:
			if err := keyConstraint(x.Constraint); err != nil {
				return nil, err
			}
		case *pg_query.Node_TableLikeClause:
			return nil, refusal("LIKE copies another table's columns and constraints, which the tool cannot see")
		default:
			return nil, refusal("unexpected table element %s", kindName(e))
		}
		elts = append(elts, e)
	}
	last := 0
	for i, e := range elts {
		if e.GetColumnDef() != nil {
			last = i + 1
		}
	}
	elts = append(elts[:last], append(tenantColumn, elts[last:]...)...)
	c.TableElts = append(elts, cols.moved...)
	isolation, err := parseStmts(fmt.Sprintf("ALTER TABLE %[1]s ENABLE ROW LEVEL SECURITY;\n"+
		"ALTER TABLE %[1]s FORCE ROW LEVEL SECURITY;\n"+
		"CREATE POLICY %[2]s ON %[1]s USING (%[3]s = %[4]s) WITH CHECK (%[3]s = %[4]s);\n%[5]s;%[6]s",
		relName(c.Relation), quoteIdent(PolicyName), quoteIdent(TenantColumn), tenantExpr, grantSQL(c.Relation), cols.registrations()))
	if err != nil {
		return nil, err
	}
	return append([]*pg_query.Node{n}, isolation...), nil
}

// grantSQL lets the serving role, which owns nothing, use rel.
func grantSQL(rel *pg_query.RangeVar) string {
	return "GRANT SELECT, INSERT, UPDATE, DELETE ON " + relName(rel) + " TO " + quoteIdent(ServingRole)
}

// serialTypes are the serial pseudo-types and the integer type each stands
// for.
var serialTypes = map[string]string{
	"smallserial": "int2", "serial2": "int2",
	"serial": "int4", "serial4": "int4",
	"bigserial": "int8", "serial8": "int8",
}

// columns collects, while the columns of table rel are rewritten, what the
// table gets beside them.
type columns struct {
	rel *pg_query.RangeVar
	// moved are the column-level keys and references, which can only name
	// their one column, made table constraints that lead with the tenant
	// column.
	moved []*pg_query.Node
	// ids are the keys of the columns that take per-tenant ids.
	ids []string
}

// registrations is the SQL that registers the table's id columns for
// NextIDFunction, which refuses keys no migration declared.
func (t *columns) registrations() string {
	var b strings.Builder
	for _, k := range t.ids {
		fmt.Fprintf(&b, "INSERT INTO %s.%s (key) VALUES (%s) ON CONFLICT DO NOTHING;", ProxySchema, idKeysTable, quoteLiteral(k))
	}
	return b.String()
}

// add rewrites column def in place: a serial or identity column takes its
// values from the tenant's own sequence (NextIDFunction), and column-level
// keys and references move to t.moved.
func (t *columns) add(def *pg_query.ColumnDef) error {
	if def == nil {
		return refusal("ADD COLUMN without a column definition")
	}
	if def.Colname == TenantColumn {
		return errTenantColumn
	}
	perTenantID := false
	if names := def.TypeName.GetNames(); len(names) == 1 {
		if to, ok := serialTypes[names[0].GetString_().GetSval()]; ok {
			def.TypeName.Names = []*pg_query.Node{pg_query.MakeStrNode("pg_catalog"), pg_query.MakeStrNode(to)}
			perTenantID = true
		}
	}
	var kept []*pg_query.Node
	for _, n := range def.Constraints {
		c := n.GetConstraint()
		switch c.GetContype() {
		case pg_query.ConstrType_CONSTR_IDENTITY:
			if len(c.Options) > 0 {
				return refusal("identity column %s: sequence options do not apply to the per-tenant ids the tool gives it", def.Colname)
			}
			perTenantID = true
			continue
		case pg_query.ConstrType_CONSTR_PRIMARY, pg_query.ConstrType_CONSTR_UNIQUE:
			c.Keys = []*pg_query.Node{pg_query.MakeStrNode(def.Colname)}
		case pg_query.ConstrType_CONSTR_FOREIGN:
			c.FkAttrs = []*pg_query.Node{pg_query.MakeStrNode(def.Colname)}
		default:
			kept = append(kept, n)
			continue
		}
		if err := keyConstraint(c); err != nil {
			return err
		}
		t.moved = append(t.moved, n)
	}
	def.Constraints = kept
	if !perTenantID {
		return nil
	}
	// The key is the table and column as named when created, and stays
	// the key after a rename.
	key := idKey(t.rel, def.Colname)
	stmts, err := parseStmts("SELECT " + nextIDCall(key))
	if err != nil {
		return err
	}
	next := stmts[0].GetSelectStmt().TargetList[0].GetResTarget().Val
	def.Constraints = append(def.Constraints, pg_query.MakeNotNullConstraintNode(-1), pg_query.MakeDefaultConstraintNode(next, -1))
	t.ids = append(t.ids, key)
	return nil
}

func idKey(rel *pg_query.RangeVar, col string) string {
	key := rel.Relname + "." + col
	if rel.Schemaname != "" {
		key = rel.Schemaname + "." + key
	}
	return key
}

// keyConstraint puts the tenant column first in a key, unique or foreign
// key constraint, on both sides of a foreign key: uniqueness becomes per
// tenant, and a row can reference only its own tenant's rows.
func keyConstraint(c *pg_query.Constraint) error {
	switch c.GetContype() {
	case pg_query.ConstrType_CONSTR_PRIMARY, pg_query.ConstrType_CONSTR_UNIQUE:
		// USING INDEX names an index that CREATE INDEX, rewritten here,
		// already led with the tenant column.
		if c.Indexname == "" {
			c.Keys = withTenant(c.Keys)
		}
	case pg_query.ConstrType_CONSTR_FOREIGN:
		switch {
		case c.FkMatchtype == "f":
			return refusal("MATCH FULL would refuse a null reference beside the never-null %s; use MATCH SIMPLE, the default", TenantColumn)
		case c.FkUpdAction == "n" || c.FkUpdAction == "d":
			return refusal("ON UPDATE SET NULL/SET DEFAULT would also set %s; PostgreSQL takes a column list only for ON DELETE", TenantColumn)
		}
		if (c.FkDelAction == "n" || c.FkDelAction == "d") && len(c.FkDelSetCols) == 0 {
			// Without a list, SET NULL would null the tenant column too.
			c.FkDelSetCols = c.FkAttrs
		}
		c.FkAttrs = withTenant(c.FkAttrs)
		if len(c.PkAttrs) > 0 {
			// Without a list the reference is to the primary key, which
			// leads with the tenant column already.
			c.PkAttrs = withTenant(c.PkAttrs)
		}
	case pg_query.ConstrType_CONSTR_EXCLUSION:
		return refusal("an exclusion constraint would hold across tenants; the tool cannot add %s to it without btree_gist", TenantColumn)
	}
	return nil
}

func withTenant(cols []*pg_query.Node) []*pg_query.Node {
	return append([]*pg_query.Node{pg_query.MakeStrNode(TenantColumn)}, cols...)
}

// index leads a B-tree index with the tenant column: a unique index becomes
// unique per tenant, and a tenant's lookups use it. Other access methods
// keep their columns (GIN and GiST have no operator class for text
// without extensions, hash indexes take one column); row-level security
// still filters what they find.
func index(s *pg_query.IndexStmt) {
	if s.AccessMethod != "" && s.AccessMethod != "btree" {
		return
	}
	tenant := &pg_query.IndexElem{Name: TenantColumn, Ordering: pg_query.SortByDir_SORTBY_DEFAULT, NullsOrdering: pg_query.SortByNulls_SORTBY_NULLS_DEFAULT}
	s.IndexParams = append([]*pg_query.Node{{Node: &pg_query.Node_IndexElem{IndexElem: tenant}}}, s.IndexParams...)
}

// alterTable applies to ALTER TABLE what createTable does to CREATE TABLE,
// and refuses the commands that would undo the isolation.
func alterTable(n *pg_query.Node, a *pg_query.AlterTableStmt) ([]*pg_query.Node, error) {
	switch a.Objtype {
	case pg_query.ObjectType_OBJECT_TABLE, pg_query.ObjectType_OBJECT_VIEW, pg_query.ObjectType_OBJECT_INDEX:
	case pg_query.ObjectType_OBJECT_TYPE:
		// ALTER TYPE … ATTRIBUTE: a composite type holds no rows.
		return []*pg_query.Node{n}, nil
	default:
		return nil, refusal("ALTER of a %s: the shared tier has none", a.Objtype)
	}
	cols := columns{rel: a.Relation}
	for _, c := range a.Cmds {
		if err := alterCmd(&cols, c.GetAlterTableCmd()); err != nil {
			return nil, err
		}
	}
	for _, c := range cols.moved {
		a.Cmds = append(a.Cmds, &pg_query.Node{Node: &pg_query.Node_AlterTableCmd{AlterTableCmd: &pg_query.AlterTableCmd{
			Subtype: pg_query.AlterTableType_AT_AddConstraint, Def: c, Behavior: pg_query.DropBehavior_DROP_RESTRICT}}})
	}
	reg, err := parseStmts(cols.registrations())
	if err != nil {
		return nil, err
	}
	return append([]*pg_query.Node{n}, reg...), nil
}

// alterCmd checks and rewrites one command of ALTER TABLE; cols collects
// what the table gets beside it.
func alterCmd(cols *columns, cmd *pg_query.AlterTableCmd) error {
	if cmd.GetName() == TenantColumn {
		return errTenantColumn
	}
	switch cmd.GetSubtype() {
	case pg_query.AlterTableType_AT_AddColumn:
		return cols.add(cmd.Def.GetColumnDef())
	case pg_query.AlterTableType_AT_AddConstraint:
		return keyConstraint(cmd.Def.GetConstraint())
	case pg_query.AlterTableType_AT_DisableRowSecurity, pg_query.AlterTableType_AT_NoForceRowSecurity:
		return refusal("row-level security is what keeps each tenant to its rows in the shared tier")
	case pg_query.AlterTableType_AT_ChangeOwner:
		return refusal("a table's owner may turn its row-level security off; owners are the tool's")
	case pg_query.AlterTableType_AT_AddInherit, pg_query.AlterTableType_AT_DropInherit, pg_query.AlterTableType_AT_AddOf,
		pg_query.AlterTableType_AT_AttachPartition, pg_query.AlterTableType_AT_DetachPartition,
		pg_query.AlterTableType_AT_DetachPartitionFinalize:
		return refusal("inheritance, typed tables and partitions are not supported in the shared tier")
	case pg_query.AlterTableType_AT_AddIdentity, pg_query.AlterTableType_AT_SetIdentity, pg_query.AlterTableType_AT_DropIdentity:
		return refusal("identity columns take per-tenant ids in the shared tier and have no identity sequence to change; declare ids in CREATE TABLE or ADD COLUMN")
	case pg_query.AlterTableType_AT_SetRelOptions, pg_query.AlterTableType_AT_ResetRelOptions, pg_query.AlterTableType_AT_ReplaceRelOptions:
		return relOptions(cmd)
	}
	return nil
}

// relOptions refuses taking security_invoker from a view (see view).
func relOptions(cmd *pg_query.AlterTableCmd) error {
	for _, o := range cmd.Def.GetList().GetItems() {
		d := o.GetDefElem()
		if d.GetDefname() != "security_invoker" {
			continue
		}
		if cmd.Subtype != pg_query.AlterTableType_AT_SetRelOptions || !defTrue(d.Arg) {
			return refusal("a view without security_invoker runs as its owner, outside row-level security, and would show every tenant's rows")
		}
	}
	return nil
}
