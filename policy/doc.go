// Package policy owns the statement policy: which client statements a
// tenant may send through the proxy, given its tier's Rules (with the
// tenant's catalog settings applied, RulesFor) and its pool mode, and
// which settings a client may pass at connection start (SessionSettings).
//
// It exists apart from router because it is the one part of the proxy's
// decisions that reads SQL: it links PostgreSQL's own parser (libpg_query
// through pg_query_go, cgo), which router, deciding where a tenant's
// session goes, does not need. Both checks a statement can face, the
// tier's rules and transaction pooling mode's refusal of session state,
// live here together so that they share one lexical pre-filter, one cache
// of per-text facts and at most one parse per statement text (Check).
//
// The rewrites the proxy makes of allowed statements are decided here too,
// from the same parse: channels moved into the tenant's namespace
// (Channels), the shared tier's COPY FROM STDIN as a load (SharedCopyIn),
// and, where tenants share a database, stand-ins for the sizes, estimates
// and settings stored per role that the database hides from them
// (CatalogViews).
//
// Refusals are reasons written for the client; the proxy sends them as
// ErrorResponses with SQLSTATE 42501 (pgerr.CodeStatementRefused), or
// 54001 for a statement nested too deeply to parse safely (depth.go,
// CodeOf). policy opens no sockets and keeps no per-connection state; a
// Policy is shared by every connection of a proxy.
package policy
