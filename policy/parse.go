package policy

import (
	"errors"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/router"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// class is a kind of statement a tenant's Rules may or may not allow.
type class uint8

const (
	classDDL class = 1 << iota
	classProcedural
	classDatabaseWide
	classSharedTables
	classExplain
	classOwnBackend
	numClasses = iota
)

func (r Rules) allows(c class) bool {
	switch c {
	case classDDL:
		return r.DDL
	case classProcedural:
		return r.Procedural
	case classDatabaseWide:
		return r.DatabaseWide
	case classSharedTables:
		return r.SharedTables
	case classExplain:
		return r.Explain
	case classOwnBackend:
		return r.OwnBackend
	}
	return false
}

// facts are what a statement text does, independent of who sends it and
// in which pool mode: a reason it is refused for everyone, or the classes
// it needs, and what transaction mode refuses in it. They are cached per
// text; verdict applies a tenant's Rules to them.
type facts struct {
	refused string
	needs   class
	// why holds, per class bit, the refusal reason naming the first thing
	// in the text that needs the class.
	why [numClasses]string
	// txn is transaction mode's refusal of the first node that would
	// outlive the transaction, "" for none (or for text the parser
	// rejects, which refused already covers).
	txn string
	// pin names the first node that pins the client to its server
	// connection in transaction mode (txnModePin), "" for none.
	pin string
	// dealloc: the text has a DEALLOCATE statement.
	dealloc bool
	// sets are the text's session-level SET and RESET statements, which
	// transaction mode tracks (SessionSet).
	sets []SessionSet
	// terminates: the text is the session's termination of itself.
	terminates bool
	// syntax is the parser's error for text it rejects, kept so the
	// client hears a syntax error as the server would report it.
	syntax *parser.Error
	// channels is set when a statement of the text is LISTEN, UNLISTEN
	// or NOTIFY, whose channel the proxy rewrites into the tenant's
	// namespace (Policy.Channels).
	channels bool
	// extensions are the names of the text's CREATE EXTENSION IF NOT
	// EXISTS statements, which Policy.Check allows only for the names the
	// operator listed (NewWith).
	extensions []string
	// views: the text names what CatalogViews rewrites where tenants
	// share a database; viewless is the refusal of what it names where
	// they do not (catalogviews.go).
	views    bool
	viewless string
	// copyIn is the shared tier's load for a COPY of a table FROM STDIN
	// (SharedCopyIn), "" for any other text; copyTable the table's name.
	copyIn, copyTable string
	// ro is what matters while the tenant is read-only (readonly.go).
	ro readOnlyFacts
}

func (f *facts) refuse(reason string) {
	if f.refused == "" {
		f.refused = reason
	}
}

func (f *facts) need(c class, reason string) {
	if f.needs&c == 0 {
		f.needs |= c
		for i := range numClasses {
			if c == 1<<i {
				f.why[i] = reason
			}
		}
	}
}

// merge adds the policy's facts of g, an SQL function's body, to f. The
// body's transaction-mode verdict is not merged: creating a function
// leaves nothing on the connection that its body would, and the body of
// BEGIN ATOMIC, which is part of the tree, is walked with it.
func (f *facts) merge(g *facts) {
	f.refuse(g.refused)
	if f.ro.escape == "" {
		f.ro.escape = g.ro.escape
	}
	f.ro.readWrite = f.ro.readWrite || g.ro.readWrite
	for i := range numClasses {
		if g.needs&(1<<i) != 0 {
			f.need(1<<i, g.why[i])
		}
	}
}

// verdict returns the refusal reason under r, "" when allowed.
func (f *facts) verdict(r Rules) string {
	if f.refused != "" {
		return f.refused
	}
	if f.viewless != "" && !r.StandIns() {
		return f.viewless
	}
	for i := range numClasses {
		if c := class(1 << i); f.needs&c != 0 && !r.allows(c) {
			return f.why[i]
		}
	}
	return ""
}

// Reasons shared by the fast path and the parser, so a statement gets the
// same message whichever decided.
const (
	reasonRole       = "SET/RESET ROLE is refused: the role is the tenant's isolation boundary and only the proxy sets it"
	reasonSessAuth   = "SET/RESET SESSION AUTHORIZATION is refused: it would change who the session runs as"
	reasonTenantGUC  = "changing the tenant setting " + migrations.TenantGUC + " is refused: the proxy sets it for this tenant"
	reasonPlan       = "changing a " + router.TenantSettingPrefix + "* setting is refused: the proxy sets the tenant's plan and features from the catalog"
	reasonResetAll   = "RESET ALL is refused: it would undo the tenant context the proxy set up"
	reasonDiscardAll = "DISCARD ALL is refused: it would undo the tenant context the proxy set up"
	reasonUnparsable = "the statement was not sent: the proxy's SQL parser rejected it"
)

// analyze parses sql and collects its facts. Text the parser rejects is
// refused: a statement the proxy cannot read is not forwarded. So is
// text nested too deeply for the parser's C stack (depth.go).
func analyze(sql string) *facts { return analyzeBody(sql, 0) }

// maxBodyNesting bounds how many SQL function bodies deep analyze goes
// (CREATE FUNCTION in a body in a body …): each body is parsed on its
// own while its outer trees are held, so without a bound one 1 MiB
// statement of bodies nested a few dozen bytes apart would cost
// thousands of parses of up to 1 MiB each, and their trees at once.
const maxBodyNesting = 8

// analyzeBody is analyze of text level function bodies deep.
func analyzeBody(sql string, level int) *facts {
	f := &facts{}
	if level > maxBodyNesting || tooDeep([]byte(sql)) {
		f.refuse(ReasonTooComplex)
		return f
	}
	res, err := pg_query.Parse(sql)
	if err != nil {
		f.refuse(reasonUnparsable + " (" + err.Error() + ")")
		errors.As(err, &f.syntax)
		return f
	}
	a := analyzer{f: f, level: level}
	if level == 0 {
		a.exempt(f.selfTermination(res))
	}
	for i, s := range res.Stmts {
		if level == 0 {
			a.exempt(f.txnModeStatement(s, res.Version))
			a.readOnlyStatement(s.Stmt, i == 0, i == len(res.Stmts)-1)
		}
		a.stmt = s.Stmt
		a.statement(s.Stmt)
		if level == 0 && channelStatement(s.Stmt) {
			// Nothing in them to walk, and walk refuses them where the
			// proxy cannot rewrite them; transaction mode's verdict on
			// LISTEN (it pins) is walk's to give otherwise.
			if l := s.Stmt.GetListenStmt(); l != nil {
				a.txnMode(l)
			}
			continue
		}
		a.walk(s.Stmt.ProtoReflect())
	}
	if level == 0 && f.refused == "" {
		f.copyIn, f.copyTable = sharedCopyIn(res) // last: it edits the tree
	}
	return f
}

type analyzer struct {
	f *facts
	// level is how many function bodies deep the text is.
	level int
	// settingOf names the setting a set_config call sets when its first
	// argument is a column of a row its statement picks by name
	// (settingRowCall).
	settingOf map[*pg_query.FuncCall]string
	// stmt is the top-level statement walked.
	stmt *pg_query.Node
	// exemptCalls are the calls transaction mode handles rather than
	// refuses (txsets.go): set_config tracked as a SET, the session's
	// own termination. Walk state, like settingOf: facts, which are
	// cached, keep no part of the tree.
	exemptCalls []*pg_query.FuncCall
}

// exempt adds c, when there is one, to a.exemptCalls.
func (a *analyzer) exempt(c *pg_query.FuncCall) {
	if c != nil {
		a.exemptCalls = append(a.exemptCalls, c)
	}
}

// statement classifies one statement by kind, recursing into the
// statements that PREPARE, EXPLAIN, COPY, DECLARE and CREATE TABLE AS
// wrap. Expressions everywhere in the tree (function calls, relations,
// SET clauses) are walk's job.
func (a *analyzer) statement(n *pg_query.Node) {
	if n == nil {
		return
	}
	switch s := n.Node.(type) {
	case *pg_query.Node_SelectStmt:
		if s.SelectStmt.IntoClause != nil {
			a.f.need(classDDL, "SELECT INTO is refused: it creates a table, and schema changes are not allowed for this tenant")
		}
		if c, name := settingRowCall(s.SelectStmt); c != nil {
			a.settingOf = map[*pg_query.FuncCall]string{c: name}
		}
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt,
		*pg_query.Node_VariableShowStmt, *pg_query.Node_VariableSetStmt, *pg_query.Node_ExecuteStmt,
		*pg_query.Node_DeallocateStmt, *pg_query.Node_FetchStmt, *pg_query.Node_ClosePortalStmt,
		*pg_query.Node_CallStmt, *pg_query.Node_ConstraintsSetStmt:
		// Plain work; what it calls or names is checked by walk.
	case *pg_query.Node_TransactionStmt:
		switch s.TransactionStmt.Kind {
		case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE, pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED,
			pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
			a.f.refuse("two-phase commit is refused: prepared transaction names are shared by every tenant of the server")
		}
	case *pg_query.Node_DiscardStmt:
		if s.DiscardStmt.Target == pg_query.DiscardMode_DISCARD_ALL {
			a.f.refuse(reasonDiscardAll)
		}
	case *pg_query.Node_PrepareStmt:
		a.statement(s.PrepareStmt.Query)
	case *pg_query.Node_ExplainStmt:
		a.f.need(classExplain, "EXPLAIN is refused for this tenant: its estimates come from statistics over every tenant's rows")
		a.statement(s.ExplainStmt.Query)
	case *pg_query.Node_DeclareCursorStmt:
		a.statement(s.DeclareCursorStmt.Query)
	case *pg_query.Node_CopyStmt:
		c := s.CopyStmt
		if c.IsProgram || c.Filename != "" {
			a.f.refuse("COPY to or from a server file or program is refused: only COPY ... STDIN/STDOUT is allowed")
		}
		a.statement(c.Query)
	case *pg_query.Node_ListenStmt, *pg_query.Node_UnlistenStmt, *pg_query.Node_NotifyStmt:
		if a.level > 0 {
			a.f.need(classDatabaseWide, reasonNestedChannel)
			return
		}
		// The proxy names the tenant's own channel in the statement
		// (channels.go).
		a.f.channels = true
	case *pg_query.Node_LockStmt:
		// ACCESS SHARE is the lock every SELECT takes, which PostgreSQL
		// grants only on what the role may read; pg_dump takes it on every
		// table it dumps. Stronger modes block other tenants' writes.
		const accessShareLock = 1 // AccessShareLock in PostgreSQL's lockdefs.h
		if s.LockStmt.Mode != accessShareLock {
			a.f.need(classSharedTables, "LOCK TABLE in a mode stronger than ACCESS SHARE is refused for this tenant: the tables are shared by every tenant of the shared tier")
		}
	case *pg_query.Node_DoStmt:
		a.f.need(classProcedural, "DO is refused for this tenant: procedural code can run SQL the proxy cannot check")
	case *pg_query.Node_CreateFunctionStmt:
		a.function(s.CreateFunctionStmt)
	case *pg_query.Node_AlterFunctionStmt:
		a.functionOptions(s.AlterFunctionStmt.Actions)
		a.f.need(classDDL, "ALTER FUNCTION is refused: schema changes are not allowed for this tenant")
	case *pg_query.Node_AlterTableStmt:
		for _, c := range s.AlterTableStmt.Cmds {
			if c.GetAlterTableCmd().GetSubtype() == pg_query.AlterTableType_AT_ChangeOwner {
				a.f.refuse("changing an object's owner is refused: ownership decides which tenant can reach it")
			}
		}
		a.f.need(classDDL, "ALTER TABLE is refused: schema changes are not allowed for this tenant")
	case *pg_query.Node_CreateTableAsStmt:
		a.f.need(classDDL, "CREATE TABLE AS is refused: schema changes are not allowed for this tenant")
		a.statement(s.CreateTableAsStmt.Query)
	case *pg_query.Node_CreateStmt, *pg_query.Node_IndexStmt, *pg_query.Node_ViewStmt, *pg_query.Node_CreateSeqStmt,
		*pg_query.Node_AlterSeqStmt, *pg_query.Node_CompositeTypeStmt, *pg_query.Node_CreateEnumStmt,
		*pg_query.Node_AlterEnumStmt, *pg_query.Node_CreateDomainStmt, *pg_query.Node_AlterDomainStmt,
		*pg_query.Node_CreateRangeStmt, *pg_query.Node_RefreshMatViewStmt, *pg_query.Node_DropStmt,
		*pg_query.Node_RenameStmt, *pg_query.Node_TruncateStmt,
		*pg_query.Node_VacuumStmt, *pg_query.Node_ClusterStmt, *pg_query.Node_ReindexStmt,
		*pg_query.Node_CreateTrigStmt, *pg_query.Node_CreatePolicyStmt, *pg_query.Node_AlterPolicyStmt,
		*pg_query.Node_GrantStmt, *pg_query.Node_AlterObjectSchemaStmt, *pg_query.Node_CreateSchemaStmt,
		*pg_query.Node_CreateStatsStmt, *pg_query.Node_AlterStatsStmt, *pg_query.Node_RuleStmt:
		a.f.need(classDDL, statementName(n)+" is refused: schema changes are not allowed for this tenant")
	case *pg_query.Node_CreateExtensionStmt:
		a.extension(s.CreateExtensionStmt)
	case *pg_query.Node_CommentStmt:
		switch s.CommentStmt.Objtype {
		case pg_query.ObjectType_OBJECT_DATABASE, pg_query.ObjectType_OBJECT_ROLE, pg_query.ObjectType_OBJECT_TABLESPACE:
			// pg_shdescription, which holds them, is every tenant's to read
			// (pg_dump and psql's \l+ read it): what the server's tenants
			// read there is only what the operator wrote.
			a.f.refuse("COMMENT ON DATABASE/ROLE/TABLESPACE is refused: comments on objects of the whole server are readable by every tenant")
		default:
			a.f.need(classDDL, "Comment is refused: schema changes are not allowed for this tenant")
		}
	default:
		// Roles, databases, tablespaces, server configuration, extensions,
		// languages, foreign servers, replication, event triggers,
		// aggregates, operators, casts, ownership: what tenants share, or
		// ways to make built-in functions run on a tenant's behalf.
		a.f.refuse(statementName(n) + " is refused: it acts on roles, databases, server configuration or objects every tenant shares")
	}
}

// extension lets Policy.Check decide a plain CREATE EXTENSION IF NOT
// EXISTS by its name; any other form (without IF NOT EXISTS, with a
// schema, version or CASCADE, or inside a function body) is refused: an
// extension's objects are shared by every tenant of the database, and
// CASCADE would install extensions the operator did not list.
func (a *analyzer) extension(s *pg_query.CreateExtensionStmt) {
	if !s.IfNotExists || len(s.Options) > 0 || a.level > 0 {
		a.f.refuse("CREATE EXTENSION is refused: an extension's objects are shared by every tenant of the database (only CREATE EXTENSION IF NOT EXISTS of an extension the operator allows is sent)")
		return
	}
	a.f.extensions = append(a.f.extensions, s.Extname)
}

// statementName turns a node's type (pg_query.Node_AlterRoleStmt) into a
// readable name (AlterRole), for messages.
func statementName(n *pg_query.Node) string {
	name := string(n.ProtoReflect().WhichOneof(n.ProtoReflect().Descriptor().Oneofs().Get(0)).Message().Name())
	return strings.TrimSuffix(name, "Stmt")
}

// function classifies CREATE FUNCTION/PROCEDURE: SQL-language bodies are
// parsed and checked like client SQL and need DDL; any other language is
// procedural. SECURITY DEFINER and SET clauses are checked by
// functionOptions.
func (a *analyzer) function(s *pg_query.CreateFunctionStmt) {
	a.functionOptions(s.Options)
	lang, body := "", ""
	if s.SqlBody != nil {
		lang = "sql"
	}
	for _, o := range s.Options {
		d := o.GetDefElem()
		switch d.GetDefname() {
		case "language":
			lang = strings.ToLower(d.GetArg().GetString_().GetSval())
		case "as":
			for _, part := range d.GetArg().GetList().GetItems() {
				body += part.GetString_().GetSval()
			}
		}
	}
	if lang != "sql" {
		a.f.need(classProcedural, "CREATE FUNCTION/PROCEDURE in a language other than SQL is refused for this tenant: its body can run SQL the proxy cannot check")
		return
	}
	a.f.need(classDDL, "CREATE FUNCTION/PROCEDURE is refused: schema changes are not allowed for this tenant")
	if body != "" {
		a.f.merge(analyzeBody(body, a.level+1))
	}
}

// functionOptions refuses SECURITY DEFINER: a function that runs as its
// owner lends the owner's rights to whoever calls it. SET clauses are
// VariableSetStmt nodes, which walk checks.
func (a *analyzer) functionOptions(opts []*pg_query.Node) {
	for _, o := range opts {
		d := o.GetDefElem()
		if d.GetDefname() == "security" && d.GetArg().GetBoolean().GetBoolval() {
			a.f.refuse("SECURITY DEFINER is refused: a function must not run with rights its caller does not have")
		}
	}
}

// walk visits every message in the tree for what can hide anywhere: calls
// of functions, relations named, settings changed, notifications sent, and
// what transaction mode refuses or pins (txnMode).
func (a *analyzer) walk(m protoreflect.Message) {
	n := m.Interface()
	a.txnMode(n)
	switch v := n.(type) {
	case *pg_query.FuncCall:
		a.f.ro.calls = true
		a.funcCall(v)
	case *pg_query.SubLink, *pg_query.WithClause:
		a.f.ro.calls = true
	case *pg_query.RangeVar:
		a.relation(v.Relname)
		a.catalogRelation(v)
	case *pg_query.VariableSetStmt:
		a.set(v)
	case *pg_query.NotifyStmt, *pg_query.ListenStmt, *pg_query.UnlistenStmt:
		a.f.need(classDatabaseWide, reasonNestedChannel)
	case *pg_query.UpdateStmt:
		a.writeTarget(v.Relation)
	case *pg_query.InsertStmt:
		a.writeTarget(v.Relation)
	case *pg_query.DeleteStmt:
		a.writeTarget(v.Relation)
	case *pg_query.MergeStmt:
		a.writeTarget(v.Relation)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind:
		case fd.IsList():
			l := val.List()
			for i := range l.Len() {
				a.walk(l.Get(i).Message())
			}
		case fd.IsMap():
		default:
			a.walk(val.Message())
		}
		return true
	})
}

// writeTarget refuses writes to pg_settings: its UPDATE rule calls
// set_config, so UPDATE pg_settings is SET in disguise (client_encoding,
// standard_conforming_strings and search_path are all listed there).
func (a *analyzer) writeTarget(rel *pg_query.RangeVar) {
	if strings.EqualFold(rel.GetRelname(), "pg_settings") {
		a.f.refuse("writing to pg_settings is refused: it changes settings, which SET checks and it would not")
	}
}

// set checks SET, SET LOCAL and RESET, also as a function's SET clause
// and as set_config. search_path is free in every tier: what isolates a
// schema-tier tenant is its role, which has no privilege on another
// tenant's schema whatever the path names (TestIsolationAttacks, "search_path
// to the victim's schema"), and a start-up option could set it anyway.
func (a *analyzer) set(s *pg_query.VariableSetStmt) {
	if s.Kind == pg_query.VariableSetKind_VAR_RESET_ALL {
		a.f.refuse(reasonResetAll)
		return
	}
	name := strings.ToLower(s.Name)
	if strings.HasPrefix(name, router.TenantSettingPrefix) {
		// The whole namespace is the proxy's, so a setting added to it
		// later is read-only from the start.
		a.f.refuse(reasonPlan)
		return
	}
	a.readOnlySetting(s, name)
	switch name {
	case "role":
		a.f.refuse(reasonRole)
	case "session_authorization":
		a.f.refuse(reasonSessAuth)
	case migrations.TenantGUC:
		a.f.refuse(reasonTenantGUC)
	case "debug_print_parse", "debug_print_rewritten", "debug_print_plan":
		// With client_min_messages at LOG these send the query's trees to
		// the client: the plan carries the same estimates as EXPLAIN, over
		// every tenant's rows, and the rewritten tree the row-level
		// security policy. Every form is refused, RESET included, as
		// EXPLAIN is. debug_pretty_print only formats what these print.
		// Their siblings (log_parser_stats, log_planner_stats,
		// log_executor_stats, log_statement_stats) are superuser-only in
		// PostgreSQL, so the serving role cannot set them.
		a.f.need(classExplain, "setting "+name+" is refused for this tenant: it prints the plan, whose estimates come from statistics over every tenant's rows, as EXPLAIN would")
	case "idle_in_transaction_session_timeout":
		a.idleSetting(s)
	case "client_encoding":
		// In client encodings such as SJIS or BIG5 a multi-byte character
		// can end in a backslash; the server reads the bytes in that
		// encoding, the proxy's parser as UTF-8, so a string literal could
		// end where the parser thinks it goes on, and hide a statement.
		if s.Kind == pg_query.VariableSetKind_VAR_SET_VALUE && (len(s.Args) != 1 || !SafeClientEncoding(constString(s.Args[0]))) {
			a.f.refuse("client encodings other than UTF8 are refused: the proxy reads SQL as UTF-8")
		}
	case "standard_conforming_strings":
		if s.Kind == pg_query.VariableSetKind_VAR_SET_VALUE && (len(s.Args) != 1 || !isOn(constString(s.Args[0]))) {
			a.f.refuse("turning standard_conforming_strings off is refused: it changes where string literals end for the server but not for the proxy's parser")
		}
	}
}

func isOn(v string) bool {
	switch strings.ToLower(v) {
	case "on", "true", "yes", "1":
		return true
	}
	return false
}

// constString returns a SET argument's value: a string, identifier-like
// keyword, or number as text.
func constString(n *pg_query.Node) string {
	c := n.GetAConst()
	switch {
	case c == nil:
		return ""
	case c.GetSval() != nil:
		return c.GetSval().GetSval()
	case c.GetBoolval() != nil:
		if c.GetBoolval().GetBoolval() {
			return "on"
		}
		return "off"
	case c.GetIval() != nil:
		if c.GetIval().GetIval() == 1 {
			return "1"
		}
		return "0"
	}
	return ""
}

// funcCall checks a function call by its unqualified name, compared
// case-insensitively: a quoted "SET_CONFIG" is not the built-in, but
// refusing it costs nothing and a schema-qualified or quoted spelling of
// the built-in can never slip through.
func (a *analyzer) funcCall(c *pg_query.FuncCall) {
	if len(c.Funcname) == 0 {
		return
	}
	name := funcName(c)
	if selfTerminate(c) {
		a.f.need(classOwnBackend, "pg_terminate_backend() is refused: "+whyServerWide+"; only a database-tier tenant may end its own session with pg_terminate_backend(pg_backend_pid())")
		return
	}
	if name == "set_config" {
		a.setConfig(c)
		return
	}
	if name == "ts_rewrite" && len(c.Args) != 2 {
		// Only the two-argument form runs a query given as text.
		return
	}
	if a.sizeCall(name) {
		return
	}
	if reason, ok := refusedFunctions[name]; ok {
		a.f.refuse(name + "() is refused: " + reason)
		return
	}
	for _, p := range refusedFunctionPrefixes {
		if strings.HasPrefix(name, p.prefix) {
			a.f.refuse(name + "() is refused: " + p.reason)
			return
		}
	}
	if reason := namespacedCall(c, name); reason != "" {
		a.f.need(classDatabaseWide, reason)
		return
	}
	for _, p := range classFunctionPrefixes {
		if strings.HasPrefix(name, p.prefix) || name == p.prefix {
			a.f.need(p.class, name+"() is refused for this tenant: "+p.reason)
			return
		}
	}
}

// funcName is c's unqualified name, lower-cased.
func funcName(c *pg_query.FuncCall) string {
	return strings.ToLower(c.Funcname[len(c.Funcname)-1].GetString_().GetSval())
}

// selfTerminate reports a call pg_terminate_backend(pg_backend_pid()):
// the session ending itself, as PostgreSQL answers with FATAL 57P01.
// PostgreSQL, not this check, is what keeps the pid the caller's own: a
// database-tier tenant can define its own pg_backend_pid ahead of
// pg_catalog's in its search path, but its login role, the only one
// granted pg_terminate_backend there (migrations.OwnDatabase), may signal
// only its own role's sessions, all of them the tenant's.
func selfTerminate(c *pg_query.FuncCall) bool {
	if len(c.Funcname) == 0 || funcName(c) != "pg_terminate_backend" || len(c.Args) != 1 {
		return false
	}
	arg := c.Args[0].GetFuncCall()
	return arg != nil && len(arg.Funcname) > 0 && funcName(arg) == "pg_backend_pid" && len(arg.Args) == 0 && !arg.AggStar
}

const (
	whyRunsSQL    = "it runs SQL given as text, which the proxy cannot check"
	whyServerWide = "it reaches sessions, files or state of the whole server, which every tenant shares"
)

var refusedFunctions = map[string]string{
	"query_to_xml":                   whyRunsSQL,
	"query_to_xmlschema":             whyRunsSQL,
	"query_to_xml_and_xmlschema":     whyRunsSQL,
	"cursor_to_xml":                  whyRunsSQL,
	"cursor_to_xmlschema":            whyRunsSQL,
	"table_to_xml":                   whyRunsSQL,
	"table_to_xmlschema":             whyRunsSQL,
	"table_to_xml_and_xmlschema":     whyRunsSQL,
	"schema_to_xml":                  whyRunsSQL,
	"schema_to_xmlschema":            whyRunsSQL,
	"schema_to_xml_and_xmlschema":    whyRunsSQL,
	"database_to_xml":                whyRunsSQL,
	"database_to_xmlschema":          whyRunsSQL,
	"database_to_xml_and_xmlschema":  whyRunsSQL,
	"ts_stat":                        whyRunsSQL,
	"ts_rewrite":                     whyRunsSQL,
	"pg_terminate_backend":           whyServerWide,
	"pg_cancel_backend":              whyServerWide,
	"pg_reload_conf":                 whyServerWide,
	"pg_rotate_logfile":              whyServerWide,
	"pg_log_backend_memory_contexts": whyServerWide,
	"pg_lock_status":                 whyServerWide,
	"pg_blocking_pids":               whyServerWide,
	"pg_safe_snapshot_blocking_pids": whyServerWide,
	"pg_prepared_xact":               whyServerWide,
	"pg_read_file":                   whyServerWide,
	"pg_read_binary_file":            whyServerWide,
	"lo_import":                      whyServerWide,
	"lo_export":                      whyServerWide,
	"pg_tablespace_size":             whyServerWide,
	"pg_current_logfile":             whyServerWide,
	"pg_switch_wal":                  whyServerWide,
	"pg_create_restore_point":        whyServerWide,
	"pg_promote":                     whyServerWide,
	"pg_backup_start":                whyServerWide,
	"pg_backup_stop":                 whyServerWide,
	"pg_import_system_collations":    whyServerWide,
	"pg_get_backend_memory_contexts": whyServerWide,
	"pg_export_snapshot":             whyServerWide,
}

var refusedFunctionPrefixes = []struct{ prefix, reason string }{
	// Activity, locks, per-backend and per-database statistics, resets,
	// pg_stat_file, pg_stat_statements.
	{"pg_stat_", whyServerWide},
	{"pg_ls_", whyServerWide},
	{"pg_file_", whyServerWide},
	{"pg_create_", whyServerWide},
	{"pg_drop_replication", whyServerWide},
	{"pg_replication_", whyServerWide},
	{"pg_logical_", whyServerWide},
	{"dblink", "it connects to other databases"},
}

var classFunctionPrefixes = []struct {
	prefix string
	class  class
	reason string
}{
	{"lo_", classSharedTables, "large objects of the shared tier belong to the serving role, so to every tenant"},
	{"loread", classSharedTables, "large objects of the shared tier belong to the serving role, so to every tenant"},
	{"lowrite", classSharedTables, "large objects of the shared tier belong to the serving role, so to every tenant"},
}

// relation checks a relation named anywhere (FROM, COPY, LOCK, DML
// targets) by unqualified name: the views below are PostgreSQL's, and a
// tenant cannot create look-alikes in shared or schema tiers anyway.
func (a *analyzer) relation(name string) {
	name = strings.ToLower(name)
	switch {
	case perDatabaseStats[name] || strings.HasPrefix(name, "pg_statio_"):
		a.f.need(classDatabaseWide, name+" is refused for this tenant: it shows other tenants' tables and volume in a shared database")
	case name == "pg_statistic_ext":
		// Extended statistics objects' definitions (name, table, columns),
		// like pg_class's rows; psql's \d reads them. Their values are in
		// pg_statistic_ext_data, refused below and the table owner's only.
	case strings.HasPrefix(name, "pg_stat") || refusedRelations[name]:
		a.f.refuse(name + " is refused: it shows other tenants' sessions, queries, data statistics or secrets")
	case name == "pg_largeobject_metadata":
		a.f.need(classSharedTables, name+" is refused for this tenant: large objects of the shared tier belong to every tenant")
	}
}

var perDatabaseStats = map[string]bool{
	"pg_stat_all_tables": true, "pg_stat_user_tables": true, "pg_stat_sys_tables": true,
	"pg_stat_xact_all_tables": true, "pg_stat_xact_user_tables": true, "pg_stat_xact_sys_tables": true,
	"pg_stat_all_indexes": true, "pg_stat_user_indexes": true, "pg_stat_sys_indexes": true,
	"pg_stat_user_functions": true, "pg_stat_xact_user_functions": true,
}

// refusedRelations reach what other tenants do or hold, or secrets. Not in
// it, on purpose: pg_roles, pg_user, pg_group, pg_auth_members and
// pg_database. They list names, role attributes, memberships and ACLs, and
// tenants' schema, role and database names are random (catalog
// NewObjectName), so a listing says how many tenants a backend holds and
// nothing of who they are; psql's \du, \l and \d read them. Their
// passwords are masked, and the settings a database-tier tenant may store
// for its own role (ALTER ROLE … SET) are hidden by column privileges
// (rolconfig, useconfig: migrations.Harden). pg_authid and pg_shadow hold
// password verifiers (superuser only anyway). pg_db_role_setting, which
// holds those settings per database and role, is revoked too and
// answered by stand-ins (catalogviews.go): an empty one where tenants
// share a database, the tenant's own database's and role's rows in the
// database tier.
// Nor are the shared catalogs pg_dump reads about the tenant's own
// database, whose rows no tenant can write through the proxy (procedural
// code, opt-in in the database tier, is out of its sight): pg_subscription
// (only a superuser creates subscriptions; their secret, subconninfo,
// PostgreSQL itself keeps from PUBLIC), pg_shdescription (comments on
// databases, roles and tablespaces, which the policy refuses to tenants)
// and pg_shseclabel (SECURITY LABEL is refused to tenants).
var refusedRelations = map[string]bool{
	"pg_locks": true, "pg_prepared_xacts": true, "pg_authid": true, "pg_shadow": true,
	"pg_replication_slots": true, "pg_hba_file_rules": true,
	"pg_ident_file_mappings": true, "pg_file_settings": true, "pg_backend_memory_contexts": true,
	"pg_shmem_allocations": true, "pg_user_mappings": true, "pg_user_mapping": true,
	"pg_largeobject": true, "pg_replication_origin_status": true,
}
