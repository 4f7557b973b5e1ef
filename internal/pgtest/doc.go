// Package pgtest is the test harness's PostgreSQL side: it gives tests the
// clusters of internal/pgcluster through testing.TB. Shared starts one
// cluster per test binary on first use (TestMain calls RunMain, which stops
// it); StartT starts a private one that the test's cleanup stops, for tests
// that restart servers or need a second region; NewDatabase hands each test
// its own database; SelfSignedCert writes a TLS certificate that both the
// proxy and a cluster can use.
//
// Where PostgreSQL is not installed the tests that need it skip, except in
// CI (CI=true), where a missing PostgreSQL fails the run. It imports
// package testing and is for tests only; code that ships uses pgcluster.
package pgtest
