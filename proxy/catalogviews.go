package proxy

import (
	"time"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
)

// rewrite returns the Query or Parse m (whole) as the server gets it: its
// channels in the session's namespace (channelsOf) and, where the tenant
// shares its database with others (policy.Rules.StandIns: the shared and
// schema tiers), with the catalogs and size functions hidden from it
// answered by stand-ins that reveal nothing and its SETs of
// idle_in_transaction_session_timeout held to idleLimit (0: not held)
// (policy.CatalogViews); in its own database (the database tier), with
// the settings stored per role answered by its database's and role's own
// (policy.RoleSettings). m itself comes back when nothing changes. Call it
// only for a statement the policy allowed.
func (b *sessionBase) rewrite(m []byte, idleLimit time.Duration) ([]byte, error) {
	m, err := b.channelsOf(m)
	if err != nil || (m[0] != pgwire.Query && m[0] != pgwire.Parse) {
		return m, err
	}
	sql := pgwire.Statement(m)
	var out []byte
	if b.rules.StandIns() {
		out = b.srv.policy.CatalogViews(sql, idleLimit)
	} else {
		out = b.srv.policy.RoleSettings(sql)
	}
	if out != nil {
		return withStatement(m, sql, out), nil
	}
	return m, nil
}
