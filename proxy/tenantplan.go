package proxy

import (
	"slices"
	"strings"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgwire"
	"github.com/tenantproxy/tenantproxy/router"
)

// A tenant's plan and features reach SQL as read-only settings
// (router.PlanSettings), set with the rest of its context. When they
// change in the catalog, the limits refresh (limits.go) stores a new
// planSetup, and each session sees the new pointer at the start of its
// next transaction:
//   - transaction mode: the session's context is rebuilt with the new
//     settings, so the transaction runs on a connection of the new context
//     (pool.TxTarget: the old one is neutralised before reuse). A session
//     pinned by session state keeps its connection and its values until
//     it is unpinned.
//   - session mode: the proxy sends the new SETs itself in front of the
//     transaction's first message and swallows their replies
//     (replyHidden), so the long-lived session reports the new values from
//     that transaction on. A transaction already open keeps the values it
//     started with, as it would with a SET in another session.
type planSetup struct {
	sql []string
	// query is sql as one Query message (session mode).
	query []byte
}

// setPlan stores t's plan and features as a new planSetup when they
// differ from the stored one, so that sessions tell a change by the
// pointer alone.
func (tl *tenantLimits) setPlan(t *catalog.Tenant) {
	sql := router.PlanSettings(t)
	if cur := tl.plan.Load(); cur != nil && slices.Equal(cur.sql, sql) {
		return
	}
	tl.plan.Store(&planSetup{sql: sql, query: queryMessage(strings.Join(sql, "; "))})
}

// planChanged reports whether the tenant's plan or features differ from
// those the session's server context has, and notes that it has the new
// ones. Per transaction it is an atomic load and a comparison.
func (b *sessionBase) planChanged() (*planSetup, bool) {
	p := b.limits.plan.Load()
	if p == nil || p == b.plan {
		return nil, false
	}
	old := b.plan
	b.plan = p
	return p, old == nil || !slices.Equal(old.sql, p.sql)
}

// withPlan returns a copy of setup with its plan and features settings
// replaced by plan's. Only the proxy writes those settings (the policy
// refuses them to clients), so their prefix finds them.
func withPlan(setup, plan []string) []string {
	out := slices.Clone(setup)
	for i, s := range out {
		for _, p := range plan {
			if name, _, ok := strings.Cut(p, " = "); ok && strings.HasPrefix(s, name+" = ") {
				out[i] = p
			}
		}
	}
	return out
}

// replan gives the transaction-mode session the tenant's current plan and
// features before it acquires a connection for its next transaction.
// Called from the client loop while unbound.
func (tx *txSession) replan() {
	p, changed := tx.planChanged()
	if !changed {
		return
	}
	tx.mu.Lock()
	defer tx.mu.Unlock()
	st := &tx.settings
	if st.base == nil {
		base := tx.target.Target
		st.base = &base
	}
	st.base.Setup = withPlan(st.base.Setup, p.sql)
	tx.retarget()
}

// replan sends the session-mode server the tenant's current plan and
// features in front of the transaction the current message starts, their
// replies hidden from the client.
func (ss *pinnedSession) replan(sc *pgwire.Scanner) error {
	p, changed := ss.planChanged()
	if !changed {
		return nil
	}
	return ss.injectSetup(sc, p.query)
}
