package proxy

import (
	"bytes"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
)

// A refused statement must fail the client's transaction exactly as a
// server error would: inside a transaction block the transaction is
// aborted (status E, COMMIT rolls back, later statements get 25P02). Only
// the server knows its transaction state, so the proxy does not answer
// for it: in place of the refused message it sends a stand-in that the
// server rejects while parsing, and the relay swaps the server's error for
// the refusal. The server's transaction state and ReadyForQuery status are
// then the client's, with no extra round trip. In the extended protocol
// the server then skips the rest of the batch up to Sync by itself, as it
// would after any error.
//
// The stand-in is a syntax error at a token of the proxy's own, which the
// server quotes back in its message whatever the message language; a
// client producing the same error itself only replaces its own error with
// a refusal it caused, in its own session. No statement is created, none
// runs, nothing is logged beyond the server's own syntax error.

// refusedToken is the stand-in statement.
const refusedToken = "tenantproxy_refused_statement"

var (
	// refusedQuery stands in for a refused Query or FunctionCall; the
	// server answers it with the error and a ReadyForQuery.
	refusedQuery = queryMessage(refusedToken)
	// refusedParse and refusedNamedParse stand in for a refused Parse of
	// the unnamed or of a named statement: a failed unnamed Parse drops
	// the server's unnamed statement, a named one leaves it, as the
	// client's own would have.
	refusedParse      = parseMessage("", refusedToken)
	refusedNamedParse = parseMessage(refusedToken, refusedToken)
	refusedMarker     = []byte(`"` + refusedToken + `"`)
)

func queryMessage(sql string) []byte {
	b := pgwire.AppendHeader(nil, pgwire.Query, len(sql)+1)
	return append(append(b, sql...), 0)
}

// parseMessage is a Parse of sql as statement name, without parameter
// types.
func parseMessage(name, sql string) []byte {
	b := pgwire.AppendHeader(nil, pgwire.Parse, len(name)+1+len(sql)+1+2)
	b = append(append(b, name...), 0)
	return append(append(b, sql...), 0, 0, 0)
}

// standInParse is the stand-in for the refused Parse message m, and
// whether it is of the unnamed statement.
func standInParse(m []byte) (standIn []byte, unnamed bool) {
	if name, _, ok := pgwire.CString(m[pgwire.HeaderSize:]); ok && len(name) > 0 {
		return refusedNamedParse, false
	}
	return refusedParse, true
}

// isRefusedError reports whether a server ErrorResponse (whole message)
// is the stand-in's: a syntax error (42601) at the proxy's token.
func isRefusedError(m []byte) bool {
	body := m[pgwire.HeaderSize:]
	code, msg := false, false
	for len(body) > 1 && body[0] != 0 {
		field := body[0]
		value, rest, ok := pgwire.CString(body[1:])
		if !ok {
			return false
		}
		switch field {
		case 'C':
			code = string(value) == "42601"
		case 'M':
			msg = bytes.Contains(value, refusedMarker)
		}
		body = rest
	}
	return code && msg
}

// takeRefusal returns the reason of the first stand-in whose error has
// not come yet, and marks it answered. A stand-in the server skipped
// (after an earlier error in the batch) is never answered: the client
// hears the earlier error, as from PostgreSQL.
func (q *replyQueue) takeRefusal() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := q.head; i < len(q.q); i++ {
		if q.q[i].kind == replyRefused && q.q[i].refusal != nil {
			r := q.q[i].refusal
			q.q[i].refusal = nil
			return r
		}
	}
	return nil
}

// swapRefusal replaces the server's ErrorResponse m (whole), when it is
// a stand-in's, with the refusal it stands for. It reports
// whether it did; the caller then drops m.
func swapRefusal(sc *pgwire.Scanner, q *replyQueue, m []byte) (bool, error) {
	if !isRefusedError(m) {
		return false, nil
	}
	why := q.takeRefusal()
	if why == nil {
		// Raised by the client itself: its own error, passed on.
		return false, nil
	}
	if err := sc.Discard(); err != nil {
		return true, err
	}
	return true, sc.Write(encodeError(why, asIs))
}
