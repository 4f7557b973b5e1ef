package proxy

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
)

// stmtSet is the set of prepared statements a server connection holds;
// *pool.Conn is one.
type stmtSet interface {
	HasStatement(name string) bool
	AddStatement(name string)
}

// expecter records a reply the server will owe for what was written;
// *replyQueue is one. readyCount is how many ReadyForQuery messages it has
// been told of so far.
type expecter interface {
	push(reply)
	readyCount() uint64
}

// rewriter carries a transaction-mode client's prepared statements across
// the server connections its transactions land on. It is pure: a client
// message and the bound connection's statement set go in; the bytes to
// write and the replies to expect come out. It is owned by the client
// loop.
//
// A named statement lives on servers under a name derived from the tenant
// context and the statement (statementName), so clients of one context
// share it on a connection and two contexts never do; a reference to a
// statement the connection lacks is preceded by its Parse. Every Parse
// under a server name comes behind a Close of that name (prepare): the
// connection's record of its statements may miss one it holds, and a
// Parse of a name the server holds would fail. The unnamed
// statement is sent again when a binding other than the one that parsed
// it uses it, since the connection's unnamed statement may be another
// client's.
type rewriter struct {
	// context is the tenant context's key (pool.TxTarget.Key).
	context string
	stmts   map[string]*clientStmt
	// unnamed is the client's last unnamed Parse as sent, unnamedEpoch
	// the binding that sent it (0: none).
	unnamed      []byte
	unnamedEpoch uint64
}

// clientStmt is one of the client's named prepared statements.
type clientStmt struct {
	server string // the name on server connections
	parse  []byte // the Parse message under that name
	// settles is the count of ReadyForQuery messages by which the
	// client's Parse has been answered: until then the server may still
	// fail it, and a second Parse of the name cannot be judged.
	settles uint64
}

// unknownStatement is what a client's reference to a statement it never
// prepared is sent as: no statement has that name, so the server answers
// as it would have, and a client cannot reach a statement the proxy
// prepared for someone else.
const unknownStatement = "tenantproxy_unknown_statement"

func newRewriter(context string) *rewriter {
	return &rewriter{context: context, stmts: make(map[string]*clientStmt)}
}

// rewrite appends to out the form of client message m (whole, header
// included) to send on a connection holding cs, in binding epoch, and
// records on q the replies the proxy must recognise. Messages other than
// Parse, Bind, Describe and Close are appended unchanged. A malformed
// message is passed on as it is: the server rejects it as it would have.
func (rw *rewriter) rewrite(out, m []byte, cs stmtSet, epoch uint64, q expecter) []byte {
	switch m[0] {
	case 'P':
		return rw.parse(out, m, cs, epoch, q)
	case 'B':
		return rw.bind(out, m, cs, epoch, q)
	case 'D', 'C':
		return rw.describeOrClose(out, m, cs, epoch, q)
	}
	return append(out, m...)
}

// parse forwards a Parse: an unnamed one as is (remembered, to be sent
// again if a later binding uses it); a named one under its server name.
func (rw *rewriter) parse(out, m []byte, cs stmtSet, epoch uint64, q expecter) []byte {
	name, rest, ok := pgwire.CString(m[5:])
	if !ok || len(name) == 0 {
		if cap(rw.unnamed) > pgwire.MaxRetained {
			rw.unnamed = nil // a long statement's room goes with it
		}
		rw.unnamed = append(rw.unnamed[:0], m...)
		rw.unnamedEpoch = epoch
		q.push(reply{kind: replyParse})
		return append(out, m...)
	}
	server := statementName(rw.context, rest)
	st := &clientStmt{server: server, settles: q.readyCount() + 1}
	st.parse = pgwire.AppendHeader(nil, 'P', len(server)+1+len(rest))
	st.parse = append(append(st.parse, server...), 0)
	st.parse = append(st.parse, rest...)
	rw.stmts[string(name)] = st
	// The connection may hold it, prepared maybe by another client of the
	// context: the client's own Parse gets its own answer all the same.
	return prepare(out, st, cs, false, q)
}

// bind forwards a Bind with the statement's server name.
func (rw *rewriter) bind(out, m []byte, cs stmtSet, epoch uint64, q expecter) []byte {
	portal, rest, ok := pgwire.CString(m[5:])
	name, params, ok2 := pgwire.CString(rest)
	if !ok || !ok2 {
		return append(out, m...)
	}
	if len(name) == 0 {
		out = rw.ensureUnnamed(out, epoch, q)
		return append(out, m...)
	}
	var server string
	out, server = rw.ensure(out, name, cs, q)
	out = pgwire.AppendHeader(out, 'B', len(portal)+1+len(server)+1+len(params))
	out = append(append(out, portal...), 0)
	out = append(append(out, server...), 0)
	return append(out, params...)
}

// describeOrClose forwards a Describe or Close of a statement with its
// server name; of a portal, unchanged. A closed statement stays on server
// connections for other clients of the context; closing a name that does
// not exist is not an error, so the client gets its CloseComplete.
func (rw *rewriter) describeOrClose(out, m []byte, cs stmtSet, epoch uint64, q expecter) []byte {
	typ := m[0]
	if typ == 'C' {
		q.push(reply{kind: replyClose})
	}
	if len(m) < 7 || m[5] != 'S' {
		return append(out, m...)
	}
	name, _, ok := pgwire.CString(m[6:])
	if !ok {
		return append(out, m...)
	}
	if len(name) == 0 {
		if typ == 'D' {
			out = rw.ensureUnnamed(out, epoch, q)
		}
		return append(out, m...)
	}
	server := unknownStatement
	if typ == 'C' {
		delete(rw.stmts, string(name))
	} else {
		out, server = rw.ensure(out, name, cs, q)
	}
	out = pgwire.AppendHeader(out, typ, 1+len(server)+1)
	out = append(out, 'S')
	return append(append(out, server...), 0)
}

// ensure returns the server name of the client's statement name, first
// appending its Parse when cs lacks it. A name the client never prepared
// maps to unknownStatement.
func (rw *rewriter) ensure(out, name []byte, cs stmtSet, q expecter) ([]byte, string) {
	st := rw.stmts[string(name)]
	if st == nil {
		return out, unknownStatement
	}
	if !cs.HasStatement(st.server) {
		out = prepare(out, st, cs, true, q)
	}
	return out, st.server
}

// prepare appends st's Parse, behind a Close of its server name whose
// reply is injected, and records the statement on cs. The record can
// miss a statement the server holds, and a Parse of it alone would then
// fail (42P05): readyFor forgets a statement whose Parse is still pending
// at a ReadyForQuery, yet that Parse may have been skipped after an error
// together with the Close before it, which left the statement in place,
// or a Parse of the same statement in a batch written before that
// ReadyForQuery was read may have succeeded. Closing a statement the
// server lacks is no error.
func prepare(out []byte, st *clientStmt, cs stmtSet, inject bool, q expecter) []byte {
	q.push(reply{kind: replyClose, inject: true})
	out = pgwire.AppendHeader(out, 'C', 1+len(st.server)+1)
	out = append(append(append(out, 'S'), st.server...), 0)
	cs.AddStatement(st.server)
	q.push(reply{kind: replyParse, inject: inject, name: st.server})
	return append(out, st.parse...)
}

// ensureUnnamed appends the client's unnamed statement again when this
// binding did not parse it.
func (rw *rewriter) ensureUnnamed(out []byte, epoch uint64, q expecter) []byte {
	if rw.unnamedEpoch == epoch || len(rw.unnamed) == 0 {
		return out
	}
	rw.unnamedEpoch = epoch
	q.push(reply{kind: replyParse, inject: true})
	return append(out, rw.unnamed...)
}

// duplicate reports whether Parse m (whole) names a statement the client
// already has, as far as the answered ReadyForQuery messages (answered)
// tell: PostgreSQL fails such a Parse with 42P05, while under server
// names it would succeed and silently replace the client's statement.
// A statement whose own Parse is still unanswered is not judged; the
// new one replaces it, as before.
func (rw *rewriter) duplicate(m []byte, answered uint64) (string, bool) {
	name, _, ok := pgwire.CString(m[pgwire.HeaderSize:])
	if !ok || len(name) == 0 {
		return "", false
	}
	if st := rw.stmts[string(name)]; st == nil || answered < st.settles {
		return "", false
	}
	return string(name), true
}

// forgetFailed forgets the client's statements whose Parse under server
// name server failed, settling at ReadyForQuery number settles: to the
// client they never existed.
func (rw *rewriter) forgetFailed(server string, settles uint64) {
	for name, st := range rw.stmts {
		if st.server == server && st.settles == settles {
			delete(rw.stmts, name)
		}
	}
}

// forget drops the client's statement name, as SQL DEALLOCATE of it
// does, reporting whether the client had it.
func (rw *rewriter) forget(name string) bool {
	_, ok := rw.stmts[name]
	delete(rw.stmts, name)
	return ok
}

// forgetAll drops every named statement of the client's, as SQL
// DEALLOCATE ALL does.
func (rw *rewriter) forgetAll() { clear(rw.stmts) }

// statementName is the server-side name of a named statement: a digest
// of the tenant context and the Parse body after the name (query text
// and parameter types), so that equal statements of one context share a
// name on a connection and statements of different contexts never do.
func statementName(context string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(context))
	h.Write([]byte{0})
	h.Write(body)
	var sum [sha256.Size]byte
	return "tp_" + hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// dropUnnamed records that the server dropped the unnamed statement (a
// failed unnamed Parse does): a later reference to it must fail there as
// it would have, not find the one before.
func (rw *rewriter) dropUnnamed() {
	rw.unnamed, rw.unnamedEpoch = rw.unnamed[:0], 0
}
