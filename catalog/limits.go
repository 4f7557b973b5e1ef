package catalog

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Limit names, as `--limit name=value` spells them and as the catalog
// stores them.
const (
	LimitClientConnections        = "client_connections"
	LimitServerConnections        = "server_connections"
	LimitStatementTimeout         = "statement_timeout"
	LimitIdleInTransactionTimeout = "idle_in_transaction_timeout"
	LimitTransactionsPerSecond    = "transactions_per_second"
	LimitServerTimePerSecond      = "server_time_per_second"
	LimitStorageMB                = "storage_mb"
)

// Where a tenant's effective limit comes from.
const (
	SourceTenant  = "tenant"  // tenant update --limit
	SourcePlan    = "plan"    // plan set --limit
	SourceDefault = "default" // the plan's built-in default
)

// limitKind says how a limit's value is written and stored.
type limitKind int

const (
	kindCount    limitKind = iota // a whole number
	kindDuration                  // PostgreSQL's duration syntax; stored in ms
	kindRate                      // a number, fractions allowed
	kindSize                      // PostgreSQL's memory syntax; stored in MB
)

var limitKinds = map[string]limitKind{
	LimitClientConnections:        kindCount,
	LimitServerConnections:        kindCount,
	LimitStatementTimeout:         kindDuration,
	LimitIdleInTransactionTimeout: kindDuration,
	LimitTransactionsPerSecond:    kindRate,
	LimitServerTimePerSecond:      kindDuration,
	LimitStorageMB:                kindSize,
}

// LimitNames lists every limit, sorted.
func LimitNames() []string {
	names := make([]string, 0, len(limitKinds))
	for n := range limitKinds {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// planLimits are each plan's built-in defaults, chosen so that a new
// installation protects tenants from each other with no flag set: a free
// tenant holds at most 4 server connections of a pool at once, runs at
// most 1,000 transactions a second, and keeps server connections busy at
// most a quarter of a second each second (server_time_per_second, in ms):
// neither a count of connections nor of transactions bounds what a tenant
// of costly queries takes of the server's cores, its connections' time
// does (measured: README "Limits and fairness"). Zero means no limit; for
// the timeouts it leaves the proxy's own setting (serve
// --idle-in-transaction-timeout) or PostgreSQL's in force. Enterprise
// tenants have databases of their own.
var planLimits = map[string]map[string]float64{
	PlanFree: {LimitClientConnections: 100, LimitServerConnections: 4,
		LimitTransactionsPerSecond: 1000, LimitServerTimePerSecond: 250, LimitStorageMB: 1024},
	PlanTrial: {LimitClientConnections: 100, LimitServerConnections: 4,
		LimitTransactionsPerSecond: 1000, LimitServerTimePerSecond: 250, LimitStorageMB: 5 * 1024},
	PlanStandard: {LimitClientConnections: 200, LimitServerConnections: 8,
		LimitTransactionsPerSecond: 5000, LimitServerTimePerSecond: 1000, LimitStorageMB: 50 * 1024},
	PlanPro: {LimitClientConnections: 400, LimitServerConnections: 16,
		LimitTransactionsPerSecond: 10000, LimitServerTimePerSecond: 4000, LimitStorageMB: 250 * 1024},
	PlanEnterprise: {LimitStorageMB: 2000 * 1024},
}

// NoLimits sets every limit of a tenant to 0 (none), for benchmarks that
// measure the proxy rather than a plan: UpdateRequest{Limits: NoLimits()}.
func NoLimits() map[string]*float64 {
	out := make(map[string]*float64, len(limitKinds))
	for name := range limitKinds {
		out[name] = new(float64)
	}
	return out
}

// Limits are a tenant's effective limits; zero means none.
type Limits struct {
	ClientConnections        int
	ServerConnections        int
	StatementTimeout         time.Duration
	IdleInTransactionTimeout time.Duration
	TransactionsPerSecond    float64
	// ServerTimePerSecond is how long the tenant's transactions may keep
	// server connections busy per second, on average.
	ServerTimePerSecond time.Duration
	StorageMB           int64
	// Source says, per limit name, where its value comes from (SourceTenant,
	// SourcePlan or SourceDefault).
	Source map[string]string
}

// resolveLimits merges a tenant's overrides over its plan's over the
// plan's defaults. Both JSON objects come from the catalog, whose CHECKs
// keep them objects; a value that is not a number counts as unset.
func resolveLimits(plan string, planJSON, tenantJSON []byte) Limits {
	var fromPlan, fromTenant map[string]float64
	_ = json.Unmarshal(planJSON, &fromPlan)
	_ = json.Unmarshal(tenantJSON, &fromTenant)
	l := Limits{Source: make(map[string]string, len(limitKinds))}
	for name := range limitKinds {
		v, src := planLimits[plan][name], SourceDefault
		if p, ok := fromPlan[name]; ok {
			v, src = p, SourcePlan
		}
		if t, ok := fromTenant[name]; ok {
			v, src = t, SourceTenant
		}
		l.Source[name] = src
		l.set(name, max(v, 0))
	}
	return l
}

func (l *Limits) set(name string, v float64) {
	switch name {
	case LimitClientConnections:
		l.ClientConnections = int(v)
	case LimitServerConnections:
		l.ServerConnections = int(v)
	case LimitStatementTimeout:
		l.StatementTimeout = time.Duration(v) * time.Millisecond
	case LimitIdleInTransactionTimeout:
		l.IdleInTransactionTimeout = time.Duration(v) * time.Millisecond
	case LimitTransactionsPerSecond:
		l.TransactionsPerSecond = v
	case LimitServerTimePerSecond:
		l.ServerTimePerSecond = time.Duration(v) * time.Millisecond
	case LimitStorageMB:
		l.StorageMB = int64(v)
	}
}

// Value is a limit's value as an operator writes it ("30s", "20", "0").
func (l Limits) Value(name string) string {
	switch name {
	case LimitClientConnections:
		return strconv.Itoa(l.ClientConnections)
	case LimitServerConnections:
		return strconv.Itoa(l.ServerConnections)
	case LimitStatementTimeout:
		return formatDuration(l.StatementTimeout)
	case LimitIdleInTransactionTimeout:
		return formatDuration(l.IdleInTransactionTimeout)
	case LimitTransactionsPerSecond:
		return strconv.FormatFloat(l.TransactionsPerSecond, 'f', -1, 64)
	case LimitServerTimePerSecond:
		return formatDuration(l.ServerTimePerSecond)
	case LimitStorageMB:
		return strconv.FormatInt(l.StorageMB, 10)
	}
	return ""
}

// MarshalJSON shows each limit with where it comes from, for
// `tenant show -o json`: {"statement_timeout": {"value": "30s",
// "source": "default"}, …}.
func (l Limits) MarshalJSON() ([]byte, error) {
	type shown struct {
		Value  string `json:"value"`
		Source string `json:"source"`
	}
	out := make(map[string]shown, len(limitKinds))
	for name := range limitKinds {
		out[name] = shown{Value: l.Value(name), Source: l.Source[name]}
	}
	return json.Marshal(out)
}

// formatDuration writes d in the largest PostgreSQL unit that keeps it whole.
func formatDuration(d time.Duration) string {
	ms := d.Milliseconds()
	for _, u := range []struct {
		name string
		ms   int64
	}{{"d", 86_400_000}, {"h", 3_600_000}, {"min", 60_000}, {"s", 1000}} {
		if ms != 0 && ms%u.ms == 0 {
			return strconv.FormatInt(ms/u.ms, 10) + u.name
		}
	}
	if ms == 0 {
		return "0"
	}
	return strconv.FormatInt(ms, 10) + "ms"
}

// ParseLimit reads name=value. An empty value (name=) removes the
// override, which set returns as nil. Durations use PostgreSQL's syntax
// (a number with an optional unit us, ms, s, min, h or d; no unit is
// milliseconds), sizes its memory units (kB, MB, GB, TB; no unit is MB);
// 0 means no limit.
func ParseLimit(s string) (name string, value *float64, err error) {
	name, v, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	kind, known := limitKinds[name]
	if !ok || !known {
		return "", nil, &ValidationError{Field: "limit", Value: s,
			Reason: "must be name=value with name one of " + strings.Join(LimitNames(), ", ")}
	}
	if v = strings.TrimSpace(v); v == "" {
		return name, nil, nil
	}
	n, err := parseLimitValue(kind, v)
	if err != nil {
		return "", nil, &ValidationError{Field: "limit", Value: s, Reason: err.Error()}
	}
	return name, &n, nil
}

var (
	durationUnits = map[string]float64{"": 1, "us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
	sizeUnits     = map[string]float64{"kB": 1.0 / 1024, "": 1, "MB": 1, "GB": 1024, "TB": 1024 * 1024}
)

func parseLimitValue(kind limitKind, v string) (float64, error) {
	num := strings.TrimRightFunc(v, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	unit := strings.TrimSpace(v[len(num):])
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || n < 0 || math.IsInf(n, 0) {
		return 0, fmt.Errorf("%q is not a non-negative number", v)
	}
	switch kind {
	case kindCount:
		if unit != "" || n != math.Trunc(n) || n > math.MaxInt32 {
			return 0, fmt.Errorf("%q is not a whole number", v)
		}
		return n, nil
	case kindRate:
		if unit != "" {
			return 0, fmt.Errorf("%q is not a number", v)
		}
		return n, nil
	}
	units, what := durationUnits, `valid units are "us", "ms", "s", "min", "h" and "d"`
	if kind == kindSize {
		units, what = sizeUnits, `valid units are "kB", "MB", "GB" and "TB"`
	}
	f, ok := units[unit]
	if !ok {
		return 0, fmt.Errorf("invalid unit in %q: %s", v, what)
	}
	n = math.Round(n * f)
	if n > math.MaxInt32 {
		return 0, fmt.Errorf("%q is out of range", v)
	}
	return n, nil
}
