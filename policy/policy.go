package policy

import (
	"hash/maphash"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Policy decides which client statements may reach PostgreSQL. It refuses
// what would change, reset or escape the tenant context (SET ROLE, the
// tenant setting and the tenant.* plan settings, by SET or set_config(),
// set_config() of a setting named at run time, and the functions that run
// SQL text),
// observe other tenants through the server (pg_stat_activity, pg_locks,
// pg_stats; sizes and estimates where tenants share a database get stand-ins, catalogviews.go; not names, which are random), or disturb them (ALTER ROLE on the
// shared serving role, pg_terminate_backend, two-phase commit), and, per
// tier, what a tenant of that tier may not do (Rules). In transaction
// pooling mode it also judges what would outlive the client's
// transaction on a server connection that the next transaction, maybe
// another tenant's, gets: refused, or pinning the client to the
// connection (txnmode.go).
//
// A verdict takes three steps, cheapest first, and the two checks share
// each of them:
//
//  1. One lexical pass (fast.go) recognises plain DML and transaction
//     control that names nothing dangerous, and the SET/RESET/DISCARD forms
//     that are always refused, without parsing. When it passes a text it
//     also knows its transaction-mode verdict: transaction mode neither
//     refuses nor pins such text, and only a statement led by DEALLOCATE
//     needs the proxy's attention.
//  2. Otherwise the statement's facts (what it does, independent of tier
//     and pool mode: the policy's refusal or classes, and the
//     transaction-mode refusal) come from one LRU cache keyed by a seeded
//     128-bit hash of its text.
//  3. On a miss, the text is parsed once with PostgreSQL's own grammar
//     (libpg_query through pg_query_go) and every node is inspected for
//     both checks in one walk, including the statements inside PREPARE,
//     EXPLAIN, COPY (query), CTEs, sub-selects, SQL function bodies and
//     multi-statement strings.
//
// Costs on a shared, loaded 2-core AMD EPYC VM (Go 1.26), medians of
// go test -run '^$' -bench Policy -benchmem -count 3 -benchtime 20000x ./policy/
// (times move by tens of percent with the machine's load; allocations do not):
//
//	fast_path_select (110-byte keyset SELECT)   ~990 ns/op      0 B/op    0 allocs/op
//	fast_path_insert                            ~820 ns/op      0 B/op    0 allocs/op
//	fast_path_refused_set_role                   ~70 ns/op      0 B/op    0 allocs/op
//	cache_hit (driver's pg_type look-up)        ~300 ns/op      0 B/op    0 allocs/op
//	cache_hit_refused (pg_stat_activity)        ~210 ns/op      0 B/op    0 allocs/op
//	cache_miss (full parse, once per text)    ~33000 ns/op   4.4 kB/op  113 allocs/op
//	txn_fast_path_update (pgbench's UPDATE)     ~540 ns/op      0 B/op    0 allocs/op
//	txn_cache_hit                               ~300 ns/op      0 B/op    0 allocs/op
//	txn_cache_hit_refused_set                   ~190 ns/op      0 B/op    0 allocs/op
//	txn_cache_miss_refused_set                 ~8400 ns/op    1.0 kB/op   22 allocs/op
//
// In transaction mode the rules and transaction mode's own check share
// the lexical pass, the cache and the parse; when each had its own, the
// same transaction-mode cases cost ~880, ~1360, ~350 and ~12800 ns/op
// (39 allocs) on the same machine.
//
// The fast path never allows what the parser would refuse: it only says
// "safe" for statements whose every word it has read and found harmless,
// and hands anything unusual (dollar quotes, Unicode escapes, unknown
// leading keywords, any pg_ name) to the parser.
//
// Client SQL assembled at run time inside the server (EXECUTE in PL/pgSQL)
// is out of any proxy's sight: that is why procedural code is refused
// outside the database tier and why the database's own hardening (the
// README's Security section) must hold on its own.
type Policy struct {
	seeds [2]maphash.Seed
	cache *lru.Cache[cacheKey, *facts]
	// parses counts the texts parsed (cache misses, and Channels'
	// parses), so that tests can show that a statement is parsed once
	// for both checks, and not for its channels unless it has some.
	parses atomic.Uint64
	// extensions are the names CREATE EXTENSION IF NOT EXISTS may name.
	extensions map[string]bool
}

type cacheKey struct {
	h1, h2 uint64
	n      int
}

// DefaultCacheSize is the number of distinct statements whose facts
// a Policy remembers.
const DefaultCacheSize = 4096

// DefaultExtensions are the extensions New lets CREATE EXTENSION IF NOT
// EXISTS name: plpgsql, which every database has, so that tools that
// send the statement on connect or in their dumps get PostgreSQL's
// "already exists, skipping" notice.
var DefaultExtensions = []string{"plpgsql"}

// New returns a Policy with an empty facts cache that allows CREATE
// EXTENSION IF NOT EXISTS of DefaultExtensions.
func New() *Policy { return NewWith(DefaultExtensions) }

// NewWith returns a Policy with an empty facts cache that allows CREATE
// EXTENSION IF NOT EXISTS of extensions only (none for an empty list) and
// sends it to PostgreSQL, which skips an installed extension whatever the
// role's privileges, and installs a missing one only for a role that may
// (a trusted extension, CREATE on the database): in the database tier the
// tenant's own database; elsewhere the serving role is refused with 42501.
// An operator should list only trusted extensions every tier may have.
func NewWith(extensions []string) *Policy {
	c, err := lru.New[cacheKey, *facts](DefaultCacheSize)
	if err != nil {
		// Only a non-positive size fails, and the size is a constant.
		panic(err)
	}
	allowed := make(map[string]bool, len(extensions))
	for _, e := range extensions {
		allowed[e] = true
	}
	return &Policy{
		seeds:      [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		cache:      c,
		extensions: allowed,
	}
}

// Mode is the pool mode a statement runs in.
type Mode uint8

const (
	// SessionMode: the client keeps one server connection for its whole
	// session; only the policy's rules apply.
	SessionMode Mode = iota
	// TransactionMode: the client holds a server connection only until its
	// transaction ends, so what would outlive the transaction on it is
	// refused too, with a hint to connect in session mode.
	TransactionMode
)

// String returns "session" or "transaction", the words of the pool_mode
// setting.
func (m Mode) String() string {
	if m == TransactionMode {
		return "transaction"
	}
	return "session"
}

// Check returns the reason sql is refused for a tenant with rules r in
// pool mode m, or "" when it may run. The reason names what was refused
// and why, for an ErrorResponse with SQLSTATE 42501. In transaction mode
// the policy's reason comes first: what it refuses (SET ROLE,
// set_config('role', …), RESET ALL) is refused in session mode too, so transaction mode's hint
// to connect in session mode would be false for it.
//
// sql may hold several statements (a simple Query); it is not modified or
// retained. One lexical pass decides whether either check needs the
// parser, and a text's cached facts serve every rule set and both modes,
// so a text is parsed once while it stays in the cache (two first checks
// of it racing may each parse it). Safe for concurrent use;
// allocation-free except on a cache miss.
func (p *Policy) Check(sql []byte, r Rules, m Mode) string {
	if m == TransactionMode {
		return p.CheckTx(sql, r).Refusal
	}
	switch v, reason, _ := fast(sql); v {
	case fastSafe:
		return ""
	case fastRefused:
		return reason
	}
	_, reason := p.rulesVerdict(sql, r)
	return reason
}

// rulesVerdict is the refusal of the policy's rules for text the lexical
// pass left undecided, with its facts (nil for text too large to parse).
func (p *Policy) rulesVerdict(sql []byte, r Rules) (*facts, string) {
	if len(sql) > MaxParsedStatement {
		return nil, reasonTooLarge
	}
	f := p.factsOf(sql)
	reason := f.verdict(r)
	if reason == "" {
		reason = p.extensionVerdict(f)
	}
	return f, reason
}

// extensionVerdict refuses a CREATE EXTENSION IF NOT EXISTS of a name the
// operator did not allow.
func (p *Policy) extensionVerdict(f *facts) string {
	for _, e := range f.extensions {
		if !p.extensions[e] {
			return "CREATE EXTENSION " + e + " is refused: an extension's objects are shared by every tenant of the database, and " + e + " is not among the extensions the operator allows"
		}
	}
	return ""
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
	if f, ok := p.cached(sql); ok {
		return f
	}
	k := p.key(sql)
	f := analyze(string(sql))
	p.parses.Add(1)
	p.cache.Add(k, f)
	return f
}

// cached returns sql's facts if the cache holds them.
func (p *Policy) cached(sql []byte) (*facts, bool) {
	return p.cache.Get(p.key(sql))
}

func (p *Policy) key(sql []byte) cacheKey {
	return cacheKey{maphash.Bytes(p.seeds[0], sql), maphash.Bytes(p.seeds[1], sql), len(sql)}
}
