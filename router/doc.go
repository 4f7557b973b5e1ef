// Package router makes the proxy's routing decisions without doing any I/O
// of its own: which tenant a connection names (TLS SNI, startup options,
// user name) and which backend, database, login role and session setup
// serve that tenant (a Route). It is pure Go, with no SQL parser: what a
// tenant's statements may do is package policy's concern, which builds on
// router (its Setting, QuoteLiteral) and not the other way round.
//
// Errors it returns are *pgerr.Error, whose Code the proxy maps to
// SQLSTATE at its one client-facing boundary.
package router
