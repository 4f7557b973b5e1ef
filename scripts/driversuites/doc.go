// Command driversuites runs pgx v5's and lib/pq's own test suites, from
// their module sources at the versions in go.mod, directly against a
// throwaway PostgreSQL and through tenantproxy against a database-tier
// tenant in both pool modes, and prints passed/failed/skipped per suite and
// target. scripts/driver-suites.sh builds the proxy and runs it; it is too
// slow for ./test/run (issue #14, build item 6).
//
// The suites' own tests decide what passes: nothing here filters or
// retries them. Failing tests are written, with their last output lines,
// under -out so that each can be classified by cause (README: "Drivers'
// own test suites").
package main
