package proxy

import (
	"bytes"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
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
// CommandComplete is the load's. Loads are rare, so the check costs an
// atomic load per CommandComplete otherwise (replyQueue.loads).

// loadQuery is the Query message to send in place of the client's Query
// text sql, or nil when sql is sent as it is: outside the shared tier, and
// for anything but a COPY of a table FROM STDIN. sql must have passed the
// policy's Check.
func (b *sessionBase) loadQuery(sql []byte) []byte {
	if !b.shared {
		return nil
	}
	load, ok := b.srv.policy.SharedCopyIn(sql)
	if !ok {
		return nil
	}
	return queryMessage(load)
}

// loading reports whether the server's next replies are a load's
// (replyLoad at the head of the queue).
func (q *replyQueue) loading() bool {
	if q.loads.Load() == 0 {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.head < len(q.q) && q.q[q.head].kind == replyLoad
}

var insertTag = []byte("INSERT 0 ")

// loadReply handles the server's CommandComplete m (whole) while a load's
// replies come: the INSERT's is passed on as "COPY n", the rest dropped.
// Outside a load it does nothing (m is relayed).
func loadReply(sc *pgwire.Scanner, q *replyQueue, m []byte) error {
	if !q.loading() {
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
