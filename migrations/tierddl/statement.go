package tierddl

import (
	"fmt"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// sharedStatement returns what n becomes in the shared tier: n itself,
// possibly edited in place, followed by the statements the tool adds; or
// why n cannot be made safe. Statements are allowed by kind, so a kind
// this code does not know is refused rather than passed unchecked.
func sharedStatement(n *pg_query.Node) ([]*pg_query.Node, error) {
	if namesProxySchema(n.ProtoReflect()) {
		return nil, refusal("it names the schema %s or %s, which belong to the proxy", ProxySchema, SequenceSchema)
	}
	one := []*pg_query.Node{n}
	switch s := n.Node.(type) {
	case *pg_query.Node_CreateStmt:
		return createTable(n, s.CreateStmt)
	case *pg_query.Node_AlterTableStmt:
		return alterTable(n, s.AlterTableStmt)
	case *pg_query.Node_IndexStmt:
		index(s.IndexStmt)
		return one, nil
	case *pg_query.Node_ViewStmt:
		return view(n, s.ViewStmt)
	case *pg_query.Node_CreateFunctionStmt:
		return one, functionOptions(s.CreateFunctionStmt.Options)
	case *pg_query.Node_AlterFunctionStmt:
		return one, functionOptions(s.AlterFunctionStmt.Actions)
	case *pg_query.Node_CreatePolicyStmt:
		return one, createPolicy(s.CreatePolicyStmt)
	case *pg_query.Node_AlterPolicyStmt:
		if s.AlterPolicyStmt.PolicyName == PolicyName {
			return nil, refusal("the policy %s is the tool's tenant isolation", PolicyName)
		}
		return one, nil
	case *pg_query.Node_DropStmt:
		return one, drop(s.DropStmt)
	case *pg_query.Node_RenameStmt:
		return one, rename(s.RenameStmt)
	case *pg_query.Node_SelectStmt:
		if s.SelectStmt.IntoClause != nil {
			return nil, refusal("SELECT INTO creates a table the tool cannot isolate; write CREATE TABLE, then INSERT … SELECT")
		}
		return one, nil
	case *pg_query.Node_CreateTableAsStmt:
		if s.CreateTableAsStmt.Objtype == pg_query.ObjectType_OBJECT_MATVIEW {
			return nil, refusal("materialized views cannot have row-level security, so every tenant would read every tenant's rows; use a view")
		}
		return nil, refusal("CREATE TABLE AS creates a table the tool cannot isolate; write CREATE TABLE, then INSERT … SELECT")
	case *pg_query.Node_CreateSeqStmt, *pg_query.Node_AlterSeqStmt:
		return nil, refusal("a sequence every tenant shares counts other tenants' rows; use an identity or serial column, which the tool numbers per tenant")
	case *pg_query.Node_GrantStmt, *pg_query.Node_GrantRoleStmt, *pg_query.Node_AlterDefaultPrivilegesStmt,
		*pg_query.Node_AlterOwnerStmt, *pg_query.Node_AlterObjectSchemaStmt:
		return nil, refusal("privileges, owners and schemas of objects are the tool's: it grants the serving role DML on every table and view")
	case *pg_query.Node_TransactionStmt:
		return nil, refusal("transaction control is the runner's: it applies each migration in a transaction of its own")
	case *pg_query.Node_RuleStmt:
		return nil, refusal("rules run their actions with the rights of the table's owner, outside the tenant's row-level security")
	case *pg_query.Node_CreateTrigStmt, *pg_query.Node_CreateEnumStmt, *pg_query.Node_AlterEnumStmt,
		*pg_query.Node_CompositeTypeStmt, *pg_query.Node_CreateDomainStmt, *pg_query.Node_AlterDomainStmt,
		*pg_query.Node_DefineStmt, *pg_query.Node_CreateRangeStmt, *pg_query.Node_CommentStmt,
		*pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt,
		*pg_query.Node_MergeStmt, *pg_query.Node_TruncateStmt:
		// The application's own objects and data, which need nothing of
		// the tenant: triggers and functions run as their invoker, under
		// the invoker's row-level security.
		return one, nil
	}
	return nil, refusal("%s is not allowed in a shared-tier migration: only the application's own DDL and DML are", kindName(n))
}

// kindName names n's statement kind as the parser does (CreateExtensionStmt).
func kindName(n *pg_query.Node) string {
	return strings.TrimPrefix(fmt.Sprintf("%T", n.Node), "*pg_query.Node_")
}

// ProxySchema and SequenceSchema are the proxy's schemas in the shared
// database (ids.go); a migration may not name them.
func namesProxySchema(m protoreflect.Message) bool {
	switch v := m.Interface().(type) {
	case *pg_query.RangeVar:
		return isProxySchema(v.Schemaname)
	case *pg_query.String:
		return isProxySchema(v.Sval)
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := val.List()
			for i := 0; i < l.Len() && !found; i++ {
				found = namesProxySchema(l.Get(i).Message())
			}
		case fd.Message() != nil && !fd.IsMap():
			found = namesProxySchema(val.Message())
		}
		return !found
	})
	return found
}

func isProxySchema(name string) bool { return name == ProxySchema || name == SequenceSchema }

// view makes v run with the invoker's rights: a view runs as its owner by
// default, and the owner (the migration role) is not subject to row-level
// security, so a plain view would show every tenant's rows. An explicit
// security_invoker = false is refused.
func view(n *pg_query.Node, v *pg_query.ViewStmt) ([]*pg_query.Node, error) {
	found := false
	for _, o := range v.Options {
		d := o.GetDefElem()
		if d == nil || d.Defname != "security_invoker" {
			continue
		}
		if !defTrue(d.Arg) {
			return nil, refusal("a view without security_invoker runs as its owner, outside row-level security, and would show every tenant's rows")
		}
		found = true
	}
	if !found {
		v.Options = append(v.Options, pg_query.MakeSimpleDefElemNode("security_invoker", pg_query.MakeStrNode("true"), -1))
	}
	grant, err := parseStmts(grantSQL(v.View))
	if err != nil {
		return nil, err
	}
	return append([]*pg_query.Node{n}, grant...), nil
}

// defTrue reports whether a reloption's value arg is true; a bare option
// (no value) is true, as PostgreSQL takes it.
func defTrue(arg *pg_query.Node) bool {
	switch a := arg.GetNode().(type) {
	case nil:
		return true
	case *pg_query.Node_String_:
		switch strings.ToLower(a.String_.Sval) {
		case "true", "on", "yes", "1", "t", "y":
			return true
		}
	case *pg_query.Node_Integer:
		return a.Integer.Ival != 0
	case *pg_query.Node_Boolean:
		return a.Boolean.Boolval
	}
	return false
}

// functionOptions refuses a function that would run with its owner's
// rights: SECURITY DEFINER (owned by the migration role, it would bypass
// row-level security) and languages that are not trusted; and one whose
// SET clause changes the tenant. What a body does is the adopter's code,
// which the tool does not read.
func functionOptions(opts []*pg_query.Node) error {
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil {
			continue
		}
		switch d.Defname {
		case "security":
			if defTrue(d.Arg) {
				return refusal("a SECURITY DEFINER function runs as the migration role, which row-level security does not restrict")
			}
		case "set":
			if d.Arg.GetVariableSetStmt().GetName() == TenantGUC {
				return refusal("a function that sets %s would run as another tenant", TenantGUC)
			}
		case "language":
			if l := strings.ToLower(d.Arg.GetString_().GetSval()); l == "c" || l == "internal" {
				return refusal("functions in language %s run code outside SQL's privilege checks", l)
			}
		}
	}
	return nil
}

// createPolicy refuses a permissive policy: PostgreSQL ORs permissive
// policies, so one more would widen what the tool's own (permissive)
// isolation policy lets a tenant see. A restrictive policy is ANDed with
// it and can only narrow it.
func createPolicy(p *pg_query.CreatePolicyStmt) error {
	if p.PolicyName == PolicyName {
		return refusal("the policy %s is the tool's tenant isolation", PolicyName)
	}
	if p.Permissive {
		return refusal("a permissive policy is ORed with the tenant isolation policy and would widen it; write CREATE POLICY … AS RESTRICTIVE")
	}
	return nil
}

func drop(d *pg_query.DropStmt) error {
	switch d.RemoveType {
	case pg_query.ObjectType_OBJECT_SCHEMA:
		return refusal("the shared tier's schemas are the tool's")
	case pg_query.ObjectType_OBJECT_POLICY:
		for _, o := range d.Objects {
			items := o.GetList().GetItems()
			if len(items) > 0 && items[len(items)-1].GetString_().GetSval() == PolicyName {
				return refusal("the policy %s is the tool's tenant isolation", PolicyName)
			}
		}
	}
	return nil
}

func rename(r *pg_query.RenameStmt) error {
	switch r.RenameType {
	case pg_query.ObjectType_OBJECT_COLUMN:
		if r.Subname == TenantColumn || r.Newname == TenantColumn {
			return errTenantColumn
		}
	case pg_query.ObjectType_OBJECT_POLICY:
		if r.Subname == PolicyName || r.Newname == PolicyName {
			return refusal("the policy %s is the tool's tenant isolation", PolicyName)
		}
	case pg_query.ObjectType_OBJECT_SCHEMA:
		return refusal("the shared tier's schemas are the tool's")
	}
	return nil
}
