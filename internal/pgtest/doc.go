// Package pgtest starts throwaway PostgreSQL clusters from local binaries:
// initdb into a temporary directory, a random free port on 127.0.0.1, the
// unix socket inside that directory, scram-sha-256 for TCP and fsync off.
// Every integration test and `tenantproxy demo` use it, so that everything
// runs against real PostgreSQL and leaves nothing behind.
package pgtest
