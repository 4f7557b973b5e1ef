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
package proxy
