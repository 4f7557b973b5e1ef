package proxy

import (
	"bytes"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
	"github.com/tenantproxy/tenantproxy/policy"
)

// SQL DEALLOCATE shares its names with the protocol's prepared
// statements, which the proxy keeps on servers under names of its own
// (stmts.go): DEALLOCATE ps of a statement the client prepared with Parse
// would reach no statement "ps" there (26000). A Query that is just that
// statement drops the client's name as its Close would, and goes to the
// server as deallocStandIn, which the server runs in the client's
// transaction state (an aborted transaction fails it with 25P02, as the
// client's own would) and answers with CommandComplete DEALLOCATE once the
// relay drops its PREPARE's (replyDeallocate). DEALLOCATE ALL goes as
// sent, dropping the client's names as well. Either keeps its names when
// the client's transaction is aborted, where PostgreSQL fails it.

// deallocStandIn prepares and deallocates a statement of its own.
const deallocStandIn = "PREPARE tenantproxy_deallocate AS SELECT; DEALLOCATE tenantproxy_deallocate"

var (
	deallocStandInQuery = queryMessage(deallocStandIn)
	prepareTag          = []byte("PREPARE\x00")
)

// deallocate returns the Query message in to send, having dropped the
// client's protocol-level statements it deallocates. Called with tx.mu
// held, for a Query the policy allowed.
func (tx *txSession) deallocate(in []byte) []byte {
	if !tx.pin.judged.Deallocates || tx.status == 'E' {
		return in
	}
	name, all, ok := policy.DeallocateTarget(pgwire.Statement(in))
	switch {
	case !ok:
		return in
	case all:
		tx.stmts.forgetAll()
		return in
	case !tx.stmts.forget(name):
		return in
	}
	tx.replies.push(reply{kind: replyDeallocate})
	return deallocStandInQuery
}

// deallocReply drops the server's CommandComplete m (whole) of the
// stand-in's PREPARE while the stand-in's replies come, reporting whether
// it did.
func deallocReply(sc *pgwire.Scanner, q *replyQueue, m []byte) (bool, error) {
	if q.spans.Load() == 0 || q.headKind() != replyDeallocate || !bytes.Equal(m[pgwire.HeaderSize:], prepareTag) {
		return false, nil
	}
	return true, sc.Discard()
}

// headKind is the kind of the next expected reply, 0 for none.
func (q *replyQueue) headKind() replyKind {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head < len(q.q) {
		return q.q[q.head].kind
	}
	return 0
}
