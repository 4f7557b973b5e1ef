// Package bench is `tenantproxy bench`: it answers, on the user's own
// machine, what the proxy costs per query, how many tenants and clients it
// carries, and whether one tenant hurts another, by comparing targets in the
// same run against one throwaway PostgreSQL.
//
// Targets are direct PostgreSQL, tenantproxy in session mode, tenantproxy in
// transaction mode (when the binary offers --pool-mode) and PgBouncer in
// transaction mode (when installed). Every client authenticates with
// SCRAM-SHA-256, at the proxy and at PgBouncer alike. Each proxy runs as its
// own `tenantproxy serve` process, so that its memory is measured alone and
// the load generator does not share its scheduler.
//
// Scenarios: (a) per-query overhead with pgbench (select-only in the simple,
// extended and prepared protocols, TPC-B-like, a custom script); (b) tenant
// context switching, a Go load generator round-robin over the connections
// of 1 to 1,000 tenants; (c) connection scale, mostly idle connections with
// the proxy's RSS; (d) connect rate with pgbench -C; (e) a noisy tenant's
// effect on a quiet tenant's latency; (f) provisioning rate of schema-tier
// tenants; (g) the latency a single client's point select gains over
// direct; (h) the transaction-mode proxy at every core and at one
// (GOMAXPROCS=1, target tp-transaction-1proc) beside PgBouncer.
//
// Measurements are interleaved: every round runs every case on every target
// in turn (the target order rotating per round), so drift of the machine
// hits all targets alike. Results are the median with min and max over the
// rounds, as a table, a JSON file and one SVG chart per scenario.
// --proxy-procs (Options.ProxyProcs) sets GOMAXPROCS of the measured
// tenantproxy processes, to compare at PgBouncer's single core.
// PostgreSQL is a throwaway cluster from internal/pgcluster, removed when
// the run ends.
//
// The package's go test benchmarks (hotpath_bench_test.go) measure the
// hot path in-process instead: relay, the catalog cache, pgbench through
// a proxy started by test.StartProxy, and the memory of idle sessions.
package bench
