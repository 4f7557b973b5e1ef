package policy

import (
	"encoding/json"
	"fmt"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// Rules are the statement classes one tenant may use beyond plain queries,
// DML and transaction control. The zero value allows none of them.
type Rules struct {
	// DDL: creating, altering and dropping tables, views, indexes,
	// sequences, types, triggers, RLS policies and SQL-language functions;
	// TRUNCATE, GRANT/REVOKE on objects, VACUUM/ANALYZE and friends.
	DDL bool
	// Procedural: DO blocks and functions in languages other than SQL,
	// whose bodies can build and run SQL the proxy never sees.
	Procedural bool
	// DatabaseWide: names every session of a database shares — advisory
	// locks, LISTEN/NOTIFY channels — per-database statistics, which show
	// other tenants' objects and volume when tenants share a database,
	// and idle_in_transaction_session_timeout but by SET, whose limit
	// keeps an idle transaction from holding the database's locks and
	// vacuum horizon. Without it the tenant shares its database, and
	// its statements get CatalogViews' stand-ins for sizes, estimates and
	// settings stored per role.
	DatabaseWide bool
	// SharedTables: LOCK TABLE and large objects, which act on objects
	// shared by every tenant of the shared tier.
	SharedTables bool
	// Explain: EXPLAIN, whose row estimates come from statistics over
	// every tenant's rows in a shared table.
	Explain bool
	// OwnBackend: pg_terminate_backend(pg_backend_pid()), a session
	// ending itself. Only the database tier's login role is the tenant's
	// alone and granted the function (migrations.OwnDatabase); in
	// transaction mode the proxy answers it itself, the server connection
	// being the pool's (TxVerdict.Terminates).
	OwnBackend bool
}

// DefaultRules are a tier's rules before per-tenant settings: the shared
// tier gets none; the schema tier may run EXPLAIN and LOCK its own tables;
// the database tier, alone in its database, gets everything but
// procedural code.
func DefaultRules(tier catalog.Tier) Rules {
	switch tier {
	case catalog.TierSchema:
		return Rules{SharedTables: true, Explain: true}
	case catalog.TierDatabase:
		return Rules{DDL: true, DatabaseWide: true, SharedTables: true, Explain: true, OwnBackend: true}
	default:
		return Rules{}
	}
}

// TenantSettings is the "policy" object of a tenant's catalog settings,
// e.g. {"policy": {"allow_ddl": true}}. A missing field keeps the tier's
// default.
type TenantSettings struct {
	AllowDDL        *bool `json:"allow_ddl"`
	AllowProcedural *bool `json:"allow_procedural"`
	AllowExplain    *bool `json:"allow_explain"`
}

// RulesFor returns t's rules: its tier's defaults with its settings
// applied. What no setting can grant: DDL in the shared tier (its tables
// are every tenant's), procedural code outside the database tier (dynamic
// SQL could SET ROLE to any schema-tier tenant, since the serving role is
// a member of them all). Malformed or impossible settings are an error,
// returned with the strictest rules (the zero Rules): a typo must neither
// widen a tenant's rights nor lock it out, and the caller logs it.
func RulesFor(t *catalog.Tenant) (Rules, error) {
	r := DefaultRules(t.Tier)
	if len(t.Settings) == 0 {
		return r, nil
	}
	var s struct {
		Policy TenantSettings `json:"policy"`
	}
	if err := json.Unmarshal(t.Settings, &s); err != nil {
		return Rules{}, fmt.Errorf("policy: tenant %q: settings.policy: %w", t.Subdomain, err)
	}
	p := s.Policy
	if p.AllowDDL != nil {
		if *p.AllowDDL && t.Tier == catalog.TierShared {
			return Rules{}, fmt.Errorf("policy: tenant %q: settings.policy.allow_ddl cannot be granted in the shared tier", t.Subdomain)
		}
		r.DDL = *p.AllowDDL
	}
	if p.AllowProcedural != nil {
		if *p.AllowProcedural && t.Tier != catalog.TierDatabase {
			return Rules{}, fmt.Errorf("policy: tenant %q: settings.policy.allow_procedural is only for the database tier", t.Subdomain)
		}
		r.Procedural = *p.AllowProcedural
	}
	if p.AllowExplain != nil {
		r.Explain = *p.AllowExplain
	}
	return r, nil
}
