// Package proxy owns the client side of tenantproxy: it accepts PostgreSQL
// wire-protocol connections (TLS, SSLRequest, GSSENCRequest,
// CancelRequest, StartupMessage), identifies and authenticates the
// tenant's user, takes a server connection from the pool for the tenant's
// Route and then relays bytes in both directions until the client leaves.
// It hands out its own cancel keys, drains gracefully, and maps every error
// to a PostgreSQL ErrorResponse in one place (errors.go).
//
// The files follow a connection's phases: admit.go (listener handshake and
// startup packet), auth.go (SCRAM-SHA-256 / trust, failed-login limit),
// session.go (routing, server connection, handover), relay.go (the
// forwarding loops), cancel.go (cancel keys), server.go (lifecycle:
// Serve, Shutdown, Reload).
//
// Sessions run in session mode: one server connection per client
// connection, returned to the pool (and reset there) when the client
// leaves it at a message boundary. The relay forwards bytes straight out
// of its read buffers and decodes only what it acts on: Query and Parse
// (the statement policy), FunctionCall (refused), Sync, Execute and
// Terminate from the client; ReadyForQuery from the server. A refused
// statement is replaced by a Sync, and its 42501 error is put in front of
// the ReadyForQuery that answers it, so replies stay in order without an
// extra round trip.
//
// Goroutines: Serve owns one handler goroutine per connection; a running
// session adds one more for the client-to-server direction, which the
// handler waits for before releasing the server connection.
package proxy
