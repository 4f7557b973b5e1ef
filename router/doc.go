// Package router makes the proxy's decisions without doing any I/O of its
// own: which tenant a connection names (TLS SNI, startup options, user
// name), which backend, database, login role and session setup serve that
// tenant (a Route), and which client statements the tenant policy refuses.
// Errors it returns are *pgerr.Error, whose Code the proxy maps to
// SQLSTATE at its one client-facing boundary.
package router
