package policy

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/router"
)

// Tenants of the shared and schema tiers share a database, and with it
// PostgreSQL's one space of advisory lock keys and LISTEN/NOTIFY
// channels. Each gets its own by construction (migrations/namespace.go):
// unqualified calls of the advisory lock functions, pg_notify and
// pg_listening_channels reach the tenant's own functions through its
// search_path, and the proxy rewrites the channel of LISTEN, UNLISTEN and
// NOTIFY statements (Channels). What neither can cover is refused outside
// the database tier: the built-ins called by their pg_catalog name
// (PostgreSQL denies them there anyway: migrations.Harden revokes them),
// and the statements where the proxy cannot rewrite them, in function
// bodies and rule actions.

const (
	reasonNestedChannel = "LISTEN, UNLISTEN and NOTIFY inside a function body or rule are refused for this tenant: " +
		"the proxy maps channels into the tenant's own namespace only in statements it receives; call pg_notify() unqualified instead"
	reasonQualified = "() called as pg_catalog's is refused for this tenant: advisory lock keys and channel names of pg_catalog's functions are shared by every tenant of the database; " +
		"call it unqualified, which reaches the tenant's own keys and channels"
)

// channelStatement reports a LISTEN, UNLISTEN or NOTIFY statement.
func channelStatement(n *pg_query.Node) bool {
	switch n.GetNode().(type) {
	case *pg_query.Node_ListenStmt, *pg_query.Node_UnlistenStmt, *pg_query.Node_NotifyStmt:
		return true
	}
	return false
}

// namespacedCall returns the refusal of a call of a function whose keys
// or channels are per database when the call names pg_catalog's, "" for
// an unqualified call (the tenant's own function) and other functions.
func namespacedCall(c *pg_query.FuncCall, name string) string {
	if !strings.HasPrefix(name, "pg_advisory_") && !strings.HasPrefix(name, "pg_try_advisory_") &&
		name != "pg_notify" && name != "pg_listening_channels" {
		return ""
	}
	n := len(c.Funcname)
	if n < 2 || !strings.EqualFold(c.Funcname[n-2].GetString_().GetSval(), "pg_catalog") {
		return ""
	}
	return name + reasonQualified
}

// Channels returns sql with the channel of each of its LISTEN, UNLISTEN
// and NOTIFY statements moved into the namespace of prefix
// (migrations.ChannelPrefix), or nil when sql has none. Only the bytes of
// those statements change: each is generated again from its parse, with
// the channel quoted as an identifier and the payload as a literal, so no
// spelling of the client's (quotes, Unicode escapes, case) can name a
// channel outside the namespace. A channel longer than
// migrations.MaxChannelLen is PostgreSQL's error for a long channel name
// (22023). Call it only for text Check allowed; sql is not retained.
func (p *Policy) Channels(sql []byte, prefix string) ([]byte, *pgerr.Error) {
	// LISTEN, UNLISTEN and NOTIFY are keywords, which no quoting or
	// escape can spell: a text without the words has none of them, and
	// most texts end here, at the cost of a scan.
	if !hasChannelWord(sql) {
		return nil, nil
	}
	if f, ok := p.cached(sql); ok && !f.channels {
		return nil, nil
	} else if !ok {
		// Not cached: text the lexical pass allowed (an INSERT of a
		// message saying "listen", up to any size), which has none of
		// them, or facts evicted since Check, which a parse brings back.
		if v, _, _ := fast(sql); v == fastSafe || len(sql) > MaxParsedStatement {
			return nil, nil
		}
	}
	res, err := pg_query.Parse(string(sql))
	p.parses.Add(1)
	if err != nil {
		return nil, nil
	}
	var out []byte
	done := 0
	for _, s := range res.Stmts {
		stmt, ok := channelSQL(s.Stmt, prefix)
		if !ok {
			continue
		}
		if stmt == "" {
			return nil, &pgerr.Error{Code: pgerr.CodeInvalidParameterValue, Msg: "channel name too long"}
		}
		out, done = splice(out, sql, done, s, stmt)
	}
	if out == nil {
		return nil, nil
	}
	return append(out, sql[done:]...), nil
}

// channelSQL is statement n generated again with its channel in the
// namespace of prefix; ok is false for other statements, and an empty
// text is a channel too long for the namespace. UNLISTEN * needs no
// rewrite: a server connection's channels are its one client's.
func channelSQL(n *pg_query.Node, prefix string) (stmt string, ok bool) {
	var verb, channel, payload string
	switch s := n.GetNode().(type) {
	case *pg_query.Node_ListenStmt:
		verb, channel = "LISTEN ", s.ListenStmt.Conditionname
	case *pg_query.Node_UnlistenStmt:
		if s.UnlistenStmt.Conditionname == "" {
			return "UNLISTEN *", true
		}
		verb, channel = "UNLISTEN ", s.UnlistenStmt.Conditionname
	case *pg_query.Node_NotifyStmt:
		verb, channel, payload = "NOTIFY ", s.NotifyStmt.Conditionname, s.NotifyStmt.Payload
	default:
		return "", false
	}
	if len(channel) > migrations.MaxChannelLen {
		return "", true
	}
	stmt = verb + router.QuoteIdent(prefix+channel)
	if payload != "" {
		stmt += ", " + router.QuoteLiteral(payload)
	}
	return stmt, true
}

// hasChannelWord reports whether sql contains "listen" or "notify" in any
// case, in one pass.
func hasChannelWord(sql []byte) bool {
	for i := 0; i+6 <= len(sql); i++ {
		switch sql[i] | 0x20 {
		case 'l':
			if hasPrefixFold(sql[i+1:], "isten") {
				return true
			}
		case 'n':
			if hasPrefixFold(sql[i+1:], "otify") {
				return true
			}
		}
	}
	return false
}

// splice appends to out the text of sql from done up to statement s, then
// stmt in place of s, and returns out and where s ends: the rewrites
// regenerate only the statements they change and keep the rest byte for
// byte.
func splice(out, sql []byte, done int, s *pg_query.RawStmt, stmt string) ([]byte, int) {
	start, end := int(s.StmtLocation), len(sql)
	if s.StmtLen > 0 {
		end = start + int(s.StmtLen)
	}
	return append(append(out, sql[done:start]...), stmt...), end
}
