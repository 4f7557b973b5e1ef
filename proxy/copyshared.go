package proxy

import (
	"bytes"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
	"github.com/tenantproxy/tenantproxy/policy"
)

// COPY FROM STDIN in the shared tier. PostgreSQL refuses COPY FROM on a
// table with row-level security, so the policy gives, for a client's
// COPY of a table FROM STDIN, a load through a staging table of the
// message's own (policy.SharedCopyIn), which the proxy sends in place of
// the client's Query. The client sees what a COPY would give it: the
// staging COPY's CopyInResponse (the client's columns, formats and
// options), its CopyData passed on as it comes, PostgreSQL's own errors,
// and one CommandComplete "COPY n". The replies of the load's other
// statements are dropped, and the INSERT's tag is sent as the COPY's:
// the COPY's own tag comes before the INSERT, which may still fail
// (23505), and a client must not hear of rows copied that never landed.
//
// The relay knows a load's replies by the replyLoad entry in front of the
// Query's ReadyForQuery in the reply queue: a simple Query's replies all
// come before that ReadyForQuery, so while the entry is at the head, every
// CommandComplete and ErrorResponse is the load's. Loads are rare, so the
// check costs an atomic load per CommandComplete or ErrorResponse
// otherwise (replyQueue.spans). An error's CONTEXT is given the client's
// table's name in place of the staging table's; the errors of the INSERT
// have no "line n" context, which a COPY's would have.

// loadQuery is the Query message to send in place of the client's Query
// text sql, or nil when sql is sent as it is: outside the shared tier, and
// for anything but a COPY of a table FROM STDIN. sql must have passed the
// policy's Check. The reply to expect is returned with it.
func (b *sessionBase) loadQuery(sql []byte) ([]byte, reply) {
	if !b.shared {
		return nil, reply{}
	}
	load, table, ok := b.srv.policy.SharedCopyIn(sql)
	if !ok {
		return nil, reply{}
	}
	return queryMessage(load), reply{kind: replyLoad, name: table}
}

// loading returns the table of the load whose replies the server sends
// next (replyLoad at the head of the queue), if it does.
func (q *replyQueue) loading() (table string, ok bool) {
	if q.spans.Load() == 0 {
		return "", false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head < len(q.q) && q.q[q.head].kind == replyLoad {
		return q.q[q.head].name, true
	}
	return "", false
}

var insertTag = []byte("INSERT 0 ")

// loadReply handles the server's CommandComplete m (whole) while a load's
// replies come: the INSERT's is passed on as "COPY n", the rest dropped.
// Outside a load it does nothing (m is relayed).
func loadReply(sc *pgwire.Scanner, q *replyQueue, m []byte) error {
	if _, ok := q.loading(); !ok {
		return nil
	}
	if err := sc.Discard(); err != nil {
		return err
	}
	tag, _, ok := pgwire.CString(m[pgwire.HeaderSize:])
	if !ok || !bytes.HasPrefix(tag, insertTag) {
		return nil
	}
	n := tag[len(insertTag):]
	out := pgwire.AppendHeader(make([]byte, 0, pgwire.HeaderSize+5+len(n)+1), pgwire.CommandComplete, 5+len(n)+1)
	out = append(append(append(out, "COPY "...), n...), 0)
	return sc.Write(out)
}

var stagingContext = []byte("COPY " + policy.CopyStaging + ",")

// loadError passes on the server's ErrorResponse m (whole) while a load's
// replies come, its CONTEXT naming the client's table where PostgreSQL
// named the staging table ("COPY users, line 2, column id: …"), as a COPY
// into the table would have. handled is false outside a load: m is the
// caller's to relay.
func loadError(sc *pgwire.Scanner, q *replyQueue, m []byte) (handled bool, err error) {
	table, ok := q.loading()
	if !ok {
		return false, nil
	}
	out, renamed := renameContext(m, []byte("COPY "+table+","))
	if !renamed {
		return true, nil
	}
	if err := sc.Discard(); err != nil {
		return true, err
	}
	return true, sc.Write(out)
}

// renameContext returns ErrorResponse m (whole) with the staging table's
// COPY context in its Where field replaced by context, and whether there
// was one to replace.
func renameContext(m, context []byte) ([]byte, bool) {
	body := m[pgwire.HeaderSize:]
	for len(body) > 1 && body[0] != 0 {
		field := body[0]
		value, rest, ok := pgwire.CString(body[1:])
		if !ok {
			return nil, false
		}
		if field == 'W' && bytes.Contains(value, stagingContext) {
			at := len(m) - len(body) + 1 // the value's offset in m
			renamed := bytes.Replace(value, stagingContext, context, 1)
			out := pgwire.AppendHeader(nil, pgwire.ErrorResponse, len(m)-pgwire.HeaderSize-len(value)+len(renamed))
			out = append(out, m[pgwire.HeaderSize:at]...)
			out = append(out, renamed...)
			return append(out, m[at+len(value):]...), true
		}
		body = rest
	}
	return nil, false
}
