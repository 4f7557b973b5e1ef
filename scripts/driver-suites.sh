#!/usr/bin/env bash
# Runs pgx v5's and lib/pq's own test suites (module sources at the
# versions in go.mod) directly against a throwaway PostgreSQL and through
# tenantproxy against a database-tier tenant in session and transaction
# mode, and prints passed/failed/skipped per suite and target. Slow (tens
# of minutes on two cores), hence not part of ./test/run.
#
#   scripts/driver-suites.sh [-targets direct,session,transaction] [-suites pgx,pq] [-out DIR]
#
# Everything it starts (the cluster, each proxy) it stops by PID; the failing
# tests, with the tail of their output, go to DIR/SUITE-TARGET.txt
# (default driver-suites.out).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/deps.sh
ensure_postgres

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/tenantproxy" ./cmd/tenantproxy
go build -o "$work/driversuites" ./scripts/driversuites
"$work/driversuites" -tenantproxy "$work/tenantproxy" "$@"
