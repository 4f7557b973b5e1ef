// Package pgcluster starts throwaway PostgreSQL clusters from local
// binaries: initdb into a temporary directory, a random free port on
// 127.0.0.1, the unix socket inside that directory, scram-sha-256 for TCP
// and fsync off. Stop removes everything a cluster wrote.
//
// It exists so that `tenantproxy demo`, `tenantproxy bench` and the test
// harness (internal/pgtest) start PostgreSQL the same way, and it does not
// import package testing, so the production binary can link it. Binaries
// come from $PG_BIN, else `pg_config --bindir`, else the newest
// /usr/lib/postgresql/*/bin; initdb and postgres refuse to run as root, so
// as root the cluster runs as the postgres OS user.
package pgcluster
