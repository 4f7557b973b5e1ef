#!/usr/bin/env bash
# Builds the release binary with scripts/build-release.sh and checks what the
# release promises: it is statically linked (it runs on an image without
# libc) and `version` names the commit it was built from.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
scripts/build-release.sh "$dir/tenantproxy"
# ldd exits 1 on a static binary, after saying so.
linkage=$(ldd "$dir/tenantproxy" 2>&1 || true)
if [[ "$linkage" != *"not a dynamic executable"* ]]; then
  echo "check-release: the release binary is dynamically linked:" >&2
  echo "$linkage" >&2
  exit 1
fi
want=$(git rev-parse --short=12 HEAD)
got=$("$dir/tenantproxy" version)
case "$got" in
  *" $want"*) echo "check-release: static binary; $got" ;;
  *) echo "check-release: version says \"$got\", want commit $want" >&2; exit 1 ;;
esac
