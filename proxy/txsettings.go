package proxy

import (
	"bytes"
	"slices"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
)

// Session settings in transaction mode. A client's session-level SET or
// RESET (policy.SessionSet, in a simple Query or the unnamed statement)
// runs on the server connection its transaction holds, as sent. When that transaction ends, the proxy
// knows from the replies whether it committed: then the statement joins
// the client's tracked settings, which go behind the tenant's set-up in
// the client's TxTarget, so every later transaction of the client finds
// them on whichever connection it lands, and the connection is recorded
// as carrying that context (pool.Conn.Retarget). Any other outcome (an
// error, a ROLLBACK) leaves the client's settings as they were, as
// PostgreSQL would, and the connection marked unknown, so whoever takes
// it next is neutralised first: a setting never reaches another client.
//
// ParameterStatus needs nothing of its own: the server reports a change
// made by the client's own statement, which is relayed, and the set-up
// that re-establishes the settings on another connection reports to the
// proxy only (setupReply), so the client never sees a value flip back.

// maxTrackedSettings bounds the settings one client may have tracked:
// each is part of the set-up of its transactions' connections.
const maxTrackedSettings = 64

const reasonTooManySettings = "too many session settings for the proxy to track in transaction pooling mode; use SET LOCAL inside a transaction" +
	"; connect in session mode (tenant setting pool_mode \"session\") to use it"

// pendingSet is a tracked setting sent and not yet known committed:
// settles is the number of the ReadyForQuery that answers its Query.
type pendingSet struct {
	set     policy.SessionSet
	settles uint64
}

// trackedSettings is a client's share of the session state.
type trackedSettings struct {
	// base is the client's target before any tracked setting (the
	// tenant's set-up and the startup settings); nil until the first.
	base *pool.Target
	// list is in the order the client set them, one per name; under
	// txSession.mu.
	list []policy.SessionSet
	// pending are the settings of transactions still running, under
	// txSession.mu. failed: the running transaction failed or rolled
	// back, as far as the replies tell.
	pending []pendingSet
	failed  bool
	// judged are the settings of the message the last verdict was for
	// (client loop only).
	judged []policy.SessionSet
	// unnamed are the settings of the client's unnamed statement, portal
	// those of the unnamed portal bound from it, not yet executed. taint:
	// a named portal was bound from such a statement, whose executions
	// are not followed, so the connection is marked unknown when given
	// back. Under txSession.mu.
	unnamed, portal []policy.SessionSet
	taint           bool
}

// verdictTracked is the verdict of the Query or Parse in tx.in, keeping
// its settings for message: a session-level SET in a named prepared
// statement is refused, since its executions are not followed; in the
// unnamed statement, drivers' way to run one statement (JDBC, psycopg),
// it is followed to the Execute of the unnamed portal (followUnnamed).
func (tx *txSession) verdictTracked(typ byte) string {
	tx.settings.judged = nil
	tx.pin.judged = tx.srv.policy.CheckTx(pgwire.Statement(tx.in), tx.rules)
	v := &tx.pin.judged
	switch {
	case v.Refusal != "" || len(v.Sets) == 0:
		return v.Refusal
	case typ == pgwire.Parse && !unnamedTarget(tx.in):
		return policy.ReasonUntrackedSet
	}
	tx.settings.judged = v.Sets
	return ""
}

// capSettings returns refusal, or the refusal of the message whose
// settings would take the client past maxTrackedSettings (a name already
// tracked is replaced, not added). Called with tx.mu held, under which the
// relay changes the list.
func (tx *txSession) capSettings(refusal string) string {
	sets := tx.settings.judged
	if refusal != "" || len(sets) == 0 {
		return refusal
	}
	n := len(tx.settings.list)
	for i, s := range sets {
		named := func(t policy.SessionSet) bool { return t.Name == s.Name }
		if !slices.ContainsFunc(tx.settings.list, named) && !slices.ContainsFunc(sets[:i], named) {
			n++
		}
	}
	if n <= maxTrackedSettings {
		return ""
	}
	tx.settings.judged = nil
	return reasonTooManySettings
}

// sentSettings records the settings of the statement just appended to
// tx.out, answered by ReadyForQuery number n. Called with tx.mu held.
func (tx *txSession) sentSettings(n uint64) {
	for _, s := range tx.settings.judged {
		tx.settings.pending = append(tx.settings.pending, pendingSet{set: s, settles: n})
	}
	tx.settings.judged = nil
}

// settingsFailed notes an ErrorResponse, or a CommandComplete with tag,
// relayed while settings are pending: the transaction will not commit
// them (an error also after a ROLLBACK TO SAVEPOINT that kept them: the
// proxy then forgets what PostgreSQL kept, never the other way round).
func (tx *txSession) settingsFailed(typ byte, tag []byte) {
	if typ == pgwire.CommandComplete && !bytes.HasPrefix(tag, []byte("ROLLBACK")) {
		return
	}
	tx.mu.Lock()
	if len(tx.settings.pending) > 0 {
		tx.settings.failed = true
	}
	tx.mu.Unlock()
}

// settleLocked settles the pending settings at the ReadyForQuery just
// consumed (status tx.status) on c. Called with tx.mu held.
func (tx *txSession) settleLocked(c *pool.Conn) {
	st := &tx.settings
	if len(st.pending) == 0 {
		return
	}
	if tx.status == 'E' {
		st.failed = true
	}
	if tx.status != 'I' {
		return
	}
	answered := tx.replies.answered()
	n := 0
	for n < len(st.pending) && st.pending[n].settles <= answered {
		n++
	}
	if n == 0 {
		// An earlier transaction of a pipeline ended; its failure was
		// not the pending settings'.
		st.failed = false
		return
	}
	if st.failed {
		c.Retarget(nil)
	} else {
		for _, p := range st.pending[:n] {
			st.list = slices.DeleteFunc(st.list, func(s policy.SessionSet) bool { return s.Name == p.set.Name })
			st.list = append(st.list, p.set)
		}
		tx.retarget()
		c.Retarget(tx.target)
	}
	st.pending = slices.Delete(st.pending, 0, n)
	st.failed = false
}

// retarget makes the client's TxTarget the tenant's set-up followed by
// the tracked settings. The client loop reads tx.target only while
// unbound, and the binding ends after this (under tx.mu).
func (tx *txSession) retarget() {
	st := &tx.settings
	if st.base == nil {
		base := tx.target.Target
		st.base = &base
	}
	t := *st.base
	t.Setup = slices.Clip(t.Setup)
	for _, s := range st.list {
		t.Setup = append(t.Setup, s.SQL)
	}
	tx.target = pool.NewTxTarget(t)
}

// unnamedTarget reports whether Parse, Bind or Execute m (whole) names the
// unnamed statement or portal first.
func unnamedTarget(m []byte) bool { return len(m) > pgwire.HeaderSize && m[pgwire.HeaderSize] == 0 }

// followUnnamed follows the session settings of the unnamed statement
// through the extended-protocol message of type typ in tx.in, after the
// verdict: an Execute of the unnamed portal bound from it makes them
// pending like a Query's. Called with tx.mu held.
func (tx *txSession) followUnnamed(typ byte) {
	st := &tx.settings
	switch typ {
	case pgwire.Parse:
		if unnamedTarget(tx.in) {
			st.unnamed = st.judged
		}
	case pgwire.Bind:
		_, stmt, ok := pgwire.CString(tx.in[pgwire.HeaderSize:])
		fromSet := ok && len(stmt) > 0 && stmt[0] == 0 && st.unnamed != nil
		if unnamedTarget(tx.in) {
			st.portal = nil
			if fromSet {
				st.portal = st.unnamed
			}
		} else if fromSet {
			st.taint = true
		}
	case pgwire.Execute:
		if unnamedTarget(tx.in) && st.portal != nil {
			st.judged, st.portal = st.portal, nil
			tx.sentSettings(tx.replies.readyCount() + 1)
		}
	}
	st.judged = nil
}

// releaseIdle gives back c, idle and unbound: pinned, reset as at
// disconnect; else keeping its context unless the binding ran settings the
// proxy did not follow (trackedSettings.taint): then its next holder
// neutralises it.
func (tx *txSession) releaseIdle(c *pool.Conn) {
	if tx.isPinned() {
		tx.backends.Release(c, true)
		return
	}
	tx.mu.Lock()
	// A read-only binding (quota.go) leaves the connection's next
	// transactions read-only: its next holder resets it.
	if tx.settings.taint || tx.quota.kind() == quotaReadOnly {
		tx.settings.taint = false
		c.Retarget(nil)
	}
	tx.mu.Unlock()
	tx.backends.ReleaseTx(c, true)
}
