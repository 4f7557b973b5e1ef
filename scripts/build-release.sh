#!/usr/bin/env bash
# Builds the release binary of tenantproxy into OUT: statically linked, so it
# runs on a base image without libc (distroless/static), and stamped with
# its version and commit. The SQL parser (pg_query_go) is C, so cgo stays on
# and the external linker links libc in statically; netgo and osusergo keep
# name resolution and user look-ups in Go, where glibc's would need its
# shared NSS modules at run time.
#
#   scripts/build-release.sh OUT
#
# VERSION and COMMIT override what git says (a Docker build context may
# have no .git).
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUT" >&2
  exit 2
fi
out=$1
cd "$(dirname "$0")/.."
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"

version=${VERSION:-$(git describe --tags --dirty 2>/dev/null || echo dev)}
if [ -z "${COMMIT:-}" ]; then
  COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD 2>/dev/null || COMMIT+=-dirty
fi

CGO_ENABLED=1 go build -trimpath -buildvcs=false \
  -tags netgo,osusergo \
  -ldflags "-s -w -X main.version=${version} -X main.commit=${COMMIT} -linkmode external -extldflags '-static'" \
  -o "$out" ./cmd/tenantproxy
