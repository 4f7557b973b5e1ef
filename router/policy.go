package router

import (
	"encoding/json"
	"fmt"
	"hash/maphash"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// Policy decides which client statements may reach PostgreSQL. It refuses
// what would change, reset or escape the tenant context (SET ROLE, the
// tenant setting, set_config() and the functions that run SQL text),
// observe other tenants through the server (pg_stat_activity, pg_locks,
// pg_stats, other databases and roles), or disturb them (ALTER ROLE on the
// shared serving role, pg_terminate_backend, two-phase commit), and, per
// tier, what a tenant of that tier may not do (Rules).
//
// A verdict takes three steps, cheapest first:
//
//  1. A lexical fast path (policy_fast.go) recognises plain DML and transaction
//     control that names nothing dangerous, and the SET/RESET/DISCARD forms
//     that are always refused, without parsing.
//  2. Otherwise the statement's facts (what it does, independent of tier)
//     come from an LRU cache keyed by a seeded 128-bit hash of its text.
//  3. On a miss, the text is parsed with PostgreSQL's own grammar
//     (libpg_query through pg_query_go) and every node is inspected,
//     including the statements inside PREPARE, EXPLAIN, COPY (query), CTEs,
//     sub-selects, SQL function bodies and multi-statement strings.
//
// Costs on the development machine (2-core Xeon VM, Go 1.26), from
// go test -run '^$' -bench Policy -benchmem ./router/:
//
//	fast_path_select (110-byte keyset SELECT)   ~500 ns/op      0 B/op    0 allocs/op
//	fast_path_insert                            ~370 ns/op      0 B/op    0 allocs/op
//	fast_path_refused_set_role                   ~49 ns/op      0 B/op    0 allocs/op
//	cache_hit (driver's pg_type look-up)        ~245 ns/op      0 B/op    0 allocs/op
//	cache_hit_refused (pg_stat_activity)        ~180 ns/op      0 B/op    0 allocs/op
//	cache_miss (full parse, once per text)    ~45000 ns/op   4.4 kB/op  114 allocs/op
//
// The fast path never allows what the parser would refuse: it only says
// "safe" for statements whose every word it has read and found harmless,
// and hands anything unusual (dollar quotes, Unicode escapes, unknown
// leading keywords, any pg_ name) to the parser.
//
// Client SQL assembled at run time inside the server (EXECUTE in PL/pgSQL)
// is out of any proxy's sight: that is why procedural code is refused
// outside the database tier and why the database hardening of DESIGN.md
// must hold on its own.
type Policy struct {
	guc string
	// gucReason is the refusal for changing guc, built once so that the
	// fast path refuses without allocating.
	gucReason string
	seeds     [2]maphash.Seed
	cache     *lru.Cache[cacheKey, *facts]
	// strict is what Check applies: the rules of the shared tier.
	strict Rules
}

type cacheKey struct {
	h1, h2 uint64
	n      int
}

// DefaultPolicyCacheSize is the number of distinct statements whose facts
// a Policy remembers.
const DefaultPolicyCacheSize = 4096

// NewPolicy returns the policy for the given tenant setting name.
func NewPolicy(tenantGUC string) *Policy {
	c, err := lru.New[cacheKey, *facts](DefaultPolicyCacheSize)
	if err != nil {
		// Only a non-positive size fails, and the size is a constant.
		panic(err)
	}
	return &Policy{
		guc:       tenantGUC,
		gucReason: tenantGUCReason(tenantGUC),
		seeds:     [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		cache:     c,
		strict:    DefaultRules(catalog.TierShared),
	}
}

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
	// SearchPath: SET/RESET search_path. In the schema tier the search
	// path is part of the tenant context the proxy sets up.
	SearchPath bool
	// DatabaseWide: names every session of a database shares — advisory
	// locks, LISTEN/NOTIFY channels — and per-database statistics and
	// relation sizes, which show other tenants' objects and volume when
	// tenants share a database.
	DatabaseWide bool
	// SharedTables: LOCK TABLE and large objects, which act on objects
	// shared by every tenant of the shared tier.
	SharedTables bool
	// Explain: EXPLAIN, whose row estimates come from statistics over
	// every tenant's rows in a shared table.
	Explain bool
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
		return Rules{DDL: true, SearchPath: true, DatabaseWide: true, SharedTables: true, Explain: true}
	default:
		return Rules{}
	}
}

// PolicySettings is the "policy" object of a tenant's catalog settings,
// e.g. {"policy": {"allow_ddl": true}}. A missing field keeps the tier's
// default.
type PolicySettings struct {
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
		Policy PolicySettings `json:"policy"`
	}
	if err := json.Unmarshal(t.Settings, &s); err != nil {
		return Rules{}, fmt.Errorf("router: tenant %q: settings.policy: %w", t.Subdomain, err)
	}
	p := s.Policy
	if p.AllowDDL != nil {
		if *p.AllowDDL && t.Tier == catalog.TierShared {
			return Rules{}, fmt.Errorf("router: tenant %q: settings.policy.allow_ddl cannot be granted in the shared tier", t.Subdomain)
		}
		r.DDL = *p.AllowDDL
	}
	if p.AllowProcedural != nil {
		if *p.AllowProcedural && t.Tier != catalog.TierDatabase {
			return Rules{}, fmt.Errorf("router: tenant %q: settings.policy.allow_procedural is only for the database tier", t.Subdomain)
		}
		r.Procedural = *p.AllowProcedural
	}
	if p.AllowExplain != nil {
		r.Explain = *p.AllowExplain
	}
	return r, nil
}

// Check returns the reason sql is refused under the strictest rules (the
// shared tier's), or "" when it may run. CheckRules is the per-tenant form.
func (p *Policy) Check(sql []byte) string {
	return p.CheckRules(sql, p.strict)
}

// CheckRules returns the reason sql is refused for a tenant with rules r,
// or "" when it may run. The reason names what was refused and why, for
// an ErrorResponse with SQLSTATE 42501. sql may hold several statements
// (a simple Query); it is not modified or retained. Safe for concurrent
// use; allocation-free except on a cache miss.
func (p *Policy) CheckRules(sql []byte, r Rules) string {
	switch v, reason := p.fast(sql); v {
	case fastSafe:
		return ""
	case fastRefused:
		return reason
	}
	if len(sql) > MaxParsedStatement {
		return reasonTooLarge
	}
	return p.factsOf(sql).verdict(r)
}

// MaxParsedStatement bounds the text the parser is given: parsing costs
// memory in proportion to the tree, and one client must not be able to
// make the proxy build a tree of a 64 MiB statement. Bulk loads that big
// are plain INSERTs, which the fast path passes, or COPY, whose data is
// not SQL.
const MaxParsedStatement = 1 << 20

const reasonTooLarge = "the statement was not sent: it is over 1 MiB and not plain DML, too large for the proxy's policy to parse"

// factsOf returns sql's facts from the cache, parsing it on a miss.
func (p *Policy) factsOf(sql []byte) *facts {
	k := cacheKey{maphash.Bytes(p.seeds[0], sql), maphash.Bytes(p.seeds[1], sql), len(sql)}
	if f, ok := p.cache.Get(k); ok {
		return f
	}
	f := analyze(string(sql), p.guc)
	p.cache.Add(k, f)
	return f
}
