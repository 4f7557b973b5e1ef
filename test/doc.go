// Package test holds tenantproxy's end-to-end suites and the harness they
// share. The suites run the real proxy on 127.0.0.1:0 in front of real
// PostgreSQL clusters from internal/pgtest and drive it with real clients
// (pgx, lib/pq, psql, pgbench, node-postgres), in every isolation tier and
// both pool modes; nothing in them mocks PostgreSQL.
//
// StartProxy (server.go) is the one way a test starts a proxy; other
// packages' tests import this package for it. Its _test.go files also hold
// the house rules (houserules_test.go): conventions of the repository that
// a test checks rather than a reviewer.
//
// `./test/run` is the project's test command and what CI runs.
package test
