// Package console owns tenantproxy's admin console: the virtual databases
// "pgbouncer" and "tenantproxy", where an operator logged in as the
// console user runs PgBouncer's admin commands over the simple query
// protocol (SHOW POOLS, CLIENTS, SERVERS, STATS, STATS_TOTALS, DATABASES,
// CONFIG, LISTS, VERSION, HELP; PAUSE, RESUME, DISABLE, ENABLE, KILL,
// RECONNECT, RELOAD, SHUTDOWN).
//
// It exists so that runbooks written for PgBouncer and pgbouncer_exporter
// work unchanged: result sets carry the column names and types PgBouncer
// 1.23 prints, with a tenant where PgBouncer has a database, and errors
// carry the SQLSTATE PgBouncer's console uses (08P01).
//
// The console answers every command itself: nothing it is sent reaches a
// PostgreSQL server. It reads and steers the proxy through small
// interfaces: Proxy (the client side, implemented by *proxy.Server),
// Pools (the server side, *pool.Manager) and Tenants (the catalog). The
// proxy authenticates the console user (SCRAM-SHA-256 against Verifier)
// and then hands the connection to Serve; a tenant's credentials never
// open it.
package console
