# Sourced by ./demo and test/run: installs, as root from Debian packages,
# what a fresh machine lacks.

command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"

apt_updated=""
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$*: missing; install it (needs root)" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  echo "installing $*" >&2
  apt-get install -y -qq "$@" >/dev/null
}

# ensure_postgres installs PostgreSQL's server binaries and clients (psql,
# pgbench): the demo and every integration test start throwaway clusters
# from them; the package's own cluster is not used.
ensure_postgres() {
  if ! { command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; } ||
     ! command -v psql >/dev/null; then
    apt_install postgresql
  fi
}
