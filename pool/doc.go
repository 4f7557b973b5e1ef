// Package pool owns the proxy's connections to PostgreSQL servers: opening
// and authenticating them with the proxy's own login role, establishing the
// tenant context a Target names, resetting every trace of a session before
// the connection serves anyone else, limits, health and metrics. It knows
// tenants only as the setup statements it is handed.
//
// It exists because server connections are the scarce resource: each
// costs a PostgreSQL process, so they are reused from client to client
// (session mode) or shared transaction by transaction (transaction mode)
// across tenants, and that is safe only if whatever one holder left behind
// is gone before the next one gets the connection.
//
// # Session mode
//
// Acquire returns a Conn whose raw socket (NetConn) the proxy's relay then
// owns: the pool has consumed startup, authentication and the replies to
// the setup statements, and the server waits for a query. Release with
// reusable=true resets the session with DISCARD ALL (after a ROLLBACK when
// the client left inside a transaction), which removes temporary tables,
// prepared statements, cursors, LISTENs, advisory locks, sequences'
// currval/lastval and every SET, SET ROLE included, and re-seeds random()
// with a seed nobody chose (setseed survives DISCARD ALL), in the same
// write; the tests check each. A connection whose reset fails
// or whose protocol state is unknown is closed, never reused.
//
// After the reset a custom setting such as app.tenant_id reads as the empty
// string, not as absent: row-level security policies must treat the empty
// string as "no tenant" and fail closed.
//
// Pools are keyed by (Addr, Database, User), shared by every tenant routed
// there. A key holds at most Config.MaxConnsPerKey connections; Acquire
// beyond that waits (per tenant, tenants served round-robin) until its
// context ends or Config.WaitTimeout (10 s by default) passes
// (ErrWaitTimeout).
// Idle connections are reused most-recently-released first, and a reaper
// goroutine, owned by the Manager and ended by Close, closes those past
// IdleTimeout or MaxLifetime. An idle connection that died (backend
// terminated, server restarted) is noticed by a non-blocking peek at its
// socket or by a failing setup, closed, and replaced within the same
// Acquire.
//
// # Errors and protocol
//
// NewManager returns an error: it validates Config and registers metrics
// with Config.Registerer, and either can fail. Acquire's errors are typed:
// ErrWaitTimeout (the pool stayed full until the wait ended; the proxy
// answers 53400), ErrClosed (57P01), *SetupError (wraps the server's
// *pgconn.PgError); connect errors wrap pgconn's. Connections speak
// protocol 3.0, so a backend's SecretKey fits a uint32.
//
// # Cancel requests
//
// Cancel forwards a cancel request using only the Target's Addr and TLS.
// The postmaster signals the backend some time after the request left,
// and the signal cancels whatever runs there then, so the proxy registers
// a request on the connection while its client's statement runs
// (Conn.BeginCancel) and forwards it with Conn.ForwardCancel. A connection
// given back meanwhile is parked, out of circulation and still counted
// against its holder, until the server has answered (hung up after
// signalling the backend; a signal that finds the backend idle is
// dropped by PostgreSQL), then handed on as if released then; if the
// server never answers (ErrCancelUnanswered), the connection is closed
// instead, since the signal may still come.
//
// # Metrics
//
// tenantproxy_server_connections{database,user,state} (state idle or
// active; active includes connections being dialled or set up),
// tenantproxy_server_connects_total{database,user,result} and
// tenantproxy_server_connection_waiters{database,user}. Labels omit the
// server address and the tenant, so series grow with routes, not clients.
//
// # Transaction mode
//
// AcquireTx binds a connection for one transaction without a round trip
// of its own: it prefers an idle connection whose context (Conn.context,
// the joined Setup last applied) is the TxTarget's, and otherwise returns
// the Query messages that establish it for the proxy to send in front of
// the client's first message and whose replies the proxy consumes. A
// connection coming from another context is neutralised first (RESET
// ROLE; RESET ALL; DEALLOCATE ALL; DISCARD SEQUENCES; a new random seed;
// COMMIT, in front of the setup in the same Query), so a failing setup
// leaves no tenant's context behind, and no per-backend state of the
// previous context reaches the next (README "Per-backend state"). AcquireTxReady runs
// the setup itself, for a client's startup, which must report the
// server's settings in the tenant's context before any transaction.
// ReleaseTx keeps the connection's context and the protocol-level
// statements the proxy prepared on it (AddStatement) for the next holder
// of the same context; a switch to another context deallocates the
// statements (their names are digests of the context, so no other context
// could use them, but pg_prepared_statements would list their text);
// Release resets both. A session-mode Acquire of a connection left in a context resets
// it first.
//
// Waiters queue per Target.Tenant and are served round-robin across
// tenants, skipping a tenant at its cap: Config.MaxConnsPerTenant (by
// default half of MaxConnsPerKey) caps what one tenant holds, so a tenant
// under its share is served ahead of one over it, and Config.WaitTimeout
// turns a long wait into ErrWaitTimeout. The reaper
// also keeps Config.MinIdle idle connections per key once the key has
// been used.
package pool
