// Package scram makes and reads SCRAM-SHA-256 verifiers (RFC 5802,
// RFC 7677) in the form PostgreSQL stores in pg_authid, and prepares
// passwords with SASLprep exactly as PostgreSQL does (saslprep.go).
//
// It exists so that the catalog keeps only verifiers, never passwords, and
// the proxy can authenticate clients against them. Because the format and
// the password preparation are PostgreSQL's own, the serving role's
// password the migrations set and a verifier the catalog writes are ones a
// backend accepts too, for non-ASCII passwords as well (internal/pgtest and
// test/TestSCRAMPasswordsAgreeWithPostgres check that against a real
// server). The SCRAM computations and the server side of the exchange are
// github.com/xdg-go/scram's, the Go implementation the field relies on;
// this package adds only what is PostgreSQL's: the verifier format and
// SASLprep's fallback to the raw password.
package scram
