package policy

import (
	"bytes"
	"hash/maphash"
	"strings"

	lru "github.com/hashicorp/golang-lru/v2"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TxnModeCheck refuses, for clients in transaction pooling mode, what
// would outlive the client's transaction on a server connection that the
// next transaction, maybe another tenant's, gets: temporary objects
// (unless ON COMMIT DROP), WITH HOLD cursors, session-level SET and RESET,
// LISTEN, session-level advisory locks, and SQL PREPARE/DEALLOCATE (the
// latter would also drop the statements the proxy prepares on the
// connection for protocol-level ones). Each refusal tells the user to use
// session mode. It is a second opinion after Policy, which already refuses
// some of these for other reasons.
//
// Statements that contain none of the words these need (most DML) are
// passed after one case-insensitive scan, without parsing; the others are
// parsed once per distinct text and the verdict is cached.
type TxnModeCheck struct {
	seeds [2]maphash.Seed
	cache *lru.Cache[cacheKey, string]
}

// NewTxnModeCheck returns a check with its own verdict cache.
func NewTxnModeCheck() *TxnModeCheck {
	c, err := lru.New[cacheKey, string](DefaultCacheSize)
	if err != nil {
		// Only a non-positive size fails, and the size is a constant.
		panic(err)
	}
	return &TxnModeCheck{seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}, cache: c}
}

// txnModeWords are the substrings one of the refused forms must contain:
// TEMP/TEMPORARY/pg_temp, HOLD, set_config, LISTEN, the advisory lock
// functions, PREPARE, DEALLOCATE; "u&" because a Unicode escape can spell
// any identifier without its letters. SET and RESET are looked for as
// the first word of a statement (leadingSet): "set" alone would send
// every UPDATE to the parser.
var txnModeWords = []string{"temp", "hold", "set_config", "listen", "advisory", "prepare", "deallocate", "u&"}

const sessionModeHint = "; connect in session mode (tenant setting pool_mode \"session\") to use it"

// Check returns why sql must not run in transaction mode, or "". It does
// not allocate for statements without any of the words above, nor on a
// cache hit.
func (c *TxnModeCheck) Check(sql []byte) string {
	if !mentionsAny(sql) {
		return ""
	}
	k := cacheKey{maphash.Bytes(c.seeds[0], sql), maphash.Bytes(c.seeds[1], sql), len(sql)}
	if v, ok := c.cache.Get(k); ok {
		return v
	}
	v := txnModeVerdict(string(sql))
	c.cache.Add(k, v)
	return v
}

func mentionsAny(sql []byte) bool {
	for _, w := range txnModeWords {
		if containsFoldASCII(sql, w) {
			return true
		}
	}
	return leadingSet(sql)
}

// leadingSet reports whether a statement of sql may start with SET or
// RESET: the first word of the text or after a ';'. A comment could hide
// where a statement starts, so any text with a comment and "set" in it
// counts; a ';' inside a literal only costs a parse.
func leadingSet(sql []byte) bool {
	if (bytes.Contains(sql, []byte("/*")) || bytes.Contains(sql, []byte("--"))) && containsFoldASCII(sql, "set") {
		return true
	}
	start := true
	for i := 0; i < len(sql); i++ {
		c := sql[i]
		switch {
		case c == ';':
			start = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
		case start:
			rest := sql[i:]
			if hasWordFold(rest, "set") || hasWordFold(rest, "reset") {
				return true
			}
			start = false
		}
	}
	return false
}

// hasWordFold reports whether b starts with the lower-case word w in any
// case, followed by a non-word byte or the end.
func hasWordFold(b []byte, w string) bool {
	if len(b) < len(w) {
		return false
	}
	for i := range len(w) {
		if lower(b[i]) != w[i] {
			return false
		}
	}
	return len(b) == len(w) || !isWordByte(b[len(w)])
}

// containsFoldASCII reports whether s contains the lower-case ASCII word w
// in any case.
func containsFoldASCII(s []byte, w string) bool {
	first := w[0]
	for i := 0; i+len(w) <= len(s); i++ {
		if lower(s[i]) != first {
			continue
		}
		j := 1
		for j < len(w) && lower(s[i+j]) == w[j] {
			j++
		}
		if j == len(w) {
			return true
		}
	}
	return false
}

// txnModeVerdict parses sql and returns the first refusal. Text the parser
// rejects passes here: Policy refuses it before this check runs.
func txnModeVerdict(sql string) string {
	res, err := pg_query.Parse(sql)
	if err != nil {
		return ""
	}
	for _, s := range res.Stmts {
		if v := txnModeWalk(s.Stmt.ProtoReflect()); v != "" {
			return v
		}
	}
	return ""
}

func txnModeWalk(m protoreflect.Message) string {
	if v := txnModeNode(m.Interface()); v != "" {
		return v
	}
	var v string
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind, fd.IsMap():
		case fd.IsList():
			l := val.List()
			for i := 0; i < l.Len() && v == ""; i++ {
				v = txnModeWalk(l.Get(i).Message())
			}
		default:
			v = txnModeWalk(val.Message())
		}
		return v == ""
	})
	return v
}

// txnModeNode judges one node of the tree, wherever it appears (inside
// EXPLAIN, PREPARE, CTEs, …).
func txnModeNode(n any) string {
	switch n := n.(type) {
	case *pg_query.CreateStmt:
		if temporary(n.Relation) && n.Oncommit != pg_query.OnCommitAction_ONCOMMIT_DROP {
			return "temporary tables outlive the transaction in transaction pooling mode; create them with ON COMMIT DROP" + sessionModeHint
		}
	case *pg_query.IntoClause:
		if temporary(n.Rel) && n.OnCommit != pg_query.OnCommitAction_ONCOMMIT_DROP {
			return "temporary tables outlive the transaction in transaction pooling mode; create them with ON COMMIT DROP" + sessionModeHint
		}
	case *pg_query.ViewStmt:
		if temporary(n.View) {
			return "temporary views outlive the transaction in transaction pooling mode" + sessionModeHint
		}
	case *pg_query.CreateSeqStmt:
		if temporary(n.Sequence) {
			return "temporary sequences outlive the transaction in transaction pooling mode" + sessionModeHint
		}
	case *pg_query.RangeVar:
		if strings.HasPrefix(strings.ToLower(n.Schemaname), "pg_temp") {
			return "the temporary schema belongs to the server connection, not to the client, in transaction pooling mode" + sessionModeHint
		}
	case *pg_query.DeclareCursorStmt:
		// CURSOR_OPT_HOLD in PostgreSQL's parsenodes.h.
		const cursorOptHold = 0x0020
		if n.Options&cursorOptHold != 0 {
			return "WITH HOLD cursors outlive the transaction in transaction pooling mode" + sessionModeHint
		}
	case *pg_query.VariableSetStmt:
		if n.IsLocal || strings.EqualFold(n.Name, "transaction") {
			return ""
		}
		return "session-level SET and RESET outlive the transaction in transaction pooling mode; use SET LOCAL inside a transaction" + sessionModeHint
	case *pg_query.ListenStmt:
		return "LISTEN needs a server connection of its own, which transaction pooling mode does not keep" + sessionModeHint
	case *pg_query.PrepareStmt:
		return "SQL PREPARE outlives the transaction in transaction pooling mode; use protocol-level prepared statements (the driver's), which the proxy keeps per client" + sessionModeHint
	case *pg_query.DeallocateStmt:
		return "SQL DEALLOCATE is refused in transaction pooling mode: prepared statements on the server connection are the proxy's" + sessionModeHint
	case *pg_query.FuncCall:
		if len(n.Funcname) == 0 {
			return ""
		}
		name := strings.ToLower(n.Funcname[len(n.Funcname)-1].GetString_().GetSval())
		if strings.HasPrefix(name, "pg_advisory_lock") || strings.HasPrefix(name, "pg_try_advisory_lock") {
			return "session-level advisory locks outlive the transaction in transaction pooling mode; use pg_advisory_xact_lock" + sessionModeHint
		}
		if name == "set_config" {
			return "set_config() can change the session outside the transaction in transaction pooling mode" + sessionModeHint
		}
	}
	return ""
}

func temporary(r *pg_query.RangeVar) bool {
	return r != nil && (r.Relpersistence == "t" || strings.HasPrefix(strings.ToLower(r.Schemaname), "pg_temp"))
}
