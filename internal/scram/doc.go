// Package scram makes and reads SCRAM-SHA-256 verifiers (RFC 5802,
// RFC 7677) in the form PostgreSQL stores in pg_authid, and holds the
// primitives (SaltedPassword, HMAC) that the proxy's side of the exchange
// computes proofs with.
//
// It exists so that the catalog keeps only verifiers, never passwords, and
// the proxy can authenticate clients against them. Because the format is
// PostgreSQL's own, the serving role's password the migrations set and a
// verifier the catalog writes are ones a backend accepts too
// (internal/pgtest checks that against a real server).
package scram
