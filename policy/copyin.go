package policy

import (
	"bytes"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

// PostgreSQL refuses COPY FROM on a table whose row-level security applies
// to the role (0A000, "COPY FROM not supported with row-level security"),
// and every shared-tier table has forced RLS. The shared tier's COPY FROM
// STDIN of a table therefore runs as a load through a staging table of the
// statement's own, in one Query message so that PostgreSQL runs it as one
// transaction (or inside the client's):
//
//	CREATE TEMP TABLE pg_temp.tenantproxy_copy AS SELECT <cols> FROM t WITH NO DATA;
//	COPY pg_temp.tenantproxy_copy (<cols>) FROM STDIN <the client's options>;
//	INSERT INTO t (<cols but tenant_id>) OVERRIDING SYSTEM VALUE SELECT … FROM pg_temp.tenantproxy_copy;
//	CALL tenantproxy.continue_ids('t');
//	DROP TABLE pg_temp.tenantproxy_copy
//
// The COPY is the client's own (same columns, types and options), so its
// CopyInResponse, its parsing of the data and its errors are what a COPY
// into t would give. The INSERT goes through RLS WITH CHECK, so a row can
// only land in the session's tenant's share, and it leaves tenant_id to
// its default (the session's tenant) even when the data carries one: a
// dump of another tenant's rows loads as this tenant's (a clone). Without
// a column list the staging table has all of t's columns and an UPDATE
// sets the tenant column before the INSERT. OVERRIDING SYSTEM VALUE
// because COPY writes GENERATED ALWAYS identity columns, which a plain
// INSERT may not. The rows keep the ids the data carries, which the
// tenant's id counters (tierddl's next_id) have not handed out: the CALL
// moves them past the highest id now in the table's tenant share, so that
// the tenant's next insert does not take one of them (23505).
//
// Nothing outlives the message: the staging table is dropped in it, and an
// error anywhere rolls back its creation with the rest (the client's
// transaction fails as after a failed COPY). One name serves every load:
// two loads never overlap on one connection.
const (
	// CopyStaging is the staging table's name, which PostgreSQL's CONTEXT
	// of an error in the load's COPY names where a COPY into t would name
	// t.
	CopyStaging  = "tenantproxy_copy"
	stagingTable = "pg_temp." + CopyStaging
)

var copyWord = []byte("copy")

// SharedCopyIn returns, when sql is a single COPY of a table FROM STDIN,
// the statements that load it in the shared tier (see stagingTable), to be
// sent in place of sql after Check allowed it, and the table's name as
// PostgreSQL's error CONTEXT gives it ("COPY table, line 2"). The client is
// then owed the replies of that text but for the command tags
// (CommandComplete) of every statement other than the INSERT, whose
// "INSERT 0 n" it hears as "COPY n". ok is false for any other text,
// which is sent as it is. Safe for concurrent use; allocation-free unless
// sql leads with COPY.
func (p *Policy) SharedCopyIn(sql []byte) (load, table string, ok bool) {
	sc := scanner{src: sql}
	if w, _, more := sc.next(); !more || !bytes.EqualFold(w, copyWord) {
		return "", "", false
	}
	if len(sql) > MaxParsedStatement {
		return "", "", false
	}
	f := p.factsOf(sql)
	return f.copyIn, f.copyTable, f.copyIn != ""
}

// sharedCopyIn is the load of res and its table's name, when res is a
// single COPY of a table FROM STDIN without WHERE (which stays
// PostgreSQL's to refuse), else "". It edits res.
func sharedCopyIn(res *pg_query.ParseResult) (load, table string) {
	if len(res.Stmts) != 1 {
		return "", ""
	}
	c := res.Stmts[0].Stmt.GetCopyStmt()
	if c == nil || !c.IsFrom || c.IsProgram || c.Filename != "" || c.Relation == nil || c.WhereClause != nil {
		return "", ""
	}
	table = c.Relation.Relname
	if table == CopyStaging && c.Relation.Schemaname == "" {
		// Unqualified, the INSERT would find the staging table first
		// (pg_temp leads the search path) and load nothing into t.
		return "", ""
	}
	rel := relationText(c.Relation)
	var cols, kept []string
	for _, a := range c.Attlist {
		name := a.GetString_().GetSval()
		cols = append(cols, quoteIdent(name))
		if name != tierddl.TenantColumn {
			kept = append(kept, quoteIdent(name))
		}
	}
	if len(cols) > 0 && len(kept) == 0 {
		return "", "" // only the tenant column: nothing of the data would load
	}
	c.Relation = &pg_query.RangeVar{Schemaname: "pg_temp", Relname: CopyStaging, Inh: true, Relpersistence: "p"}
	copyText, err := pg_query.Deparse(res)
	if err != nil {
		return "", ""
	}
	var b strings.Builder
	selected, inserted := "*", ""
	if len(cols) > 0 {
		selected = strings.Join(cols, ", ")
		inserted = " (" + strings.Join(kept, ", ") + ")"
	}
	b.WriteString("CREATE TEMP TABLE " + stagingTable + " AS SELECT " + selected + " FROM " + rel + " WITH NO DATA;\n")
	b.WriteString(copyText + ";\n")
	from := "*"
	if len(cols) == 0 {
		tenant := quoteIdent(tierddl.TenantColumn)
		guc := "current_setting(" + quoteLiteral(migrations.TenantGUC) + ", true)"
		b.WriteString("UPDATE " + stagingTable + " SET " + tenant + " = " + guc + " WHERE " + tenant + " IS DISTINCT FROM " + guc + ";\n")
	} else {
		from = strings.Join(kept, ", ")
	}
	b.WriteString("INSERT INTO " + rel + inserted + " OVERRIDING SYSTEM VALUE SELECT " + from + " FROM " + stagingTable + ";\n")
	b.WriteString("CALL " + tierddl.ContinueIDsProcedure + "(" + quoteLiteral(rel) + ");\n")
	b.WriteString("DROP TABLE " + stagingTable)
	return b.String(), table
}

// relationText is r as a qualified, quoted name.
func relationText(r *pg_query.RangeVar) string {
	var parts []string
	for _, s := range []string{r.Catalogname, r.Schemaname, r.Relname} {
		if s != "" {
			parts = append(parts, quoteIdent(s))
		}
	}
	return strings.Join(parts, ".")
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
