#!/usr/bin/env bash
# Runs the whole of gito on this machine, without Docker: PostgreSQL and Mosquitto (installed with
# apt-get when missing), gito's local broker (mosquitto/mosquitto.conf, with authentication), a
# second Mosquitto standing in for the plant's "external" broker, gito-api (migrating on boot, via
# entrypoint.sh), gito-bridge and the simulator. Ctrl-C (or SIGTERM, SIGHUP) stops everything it
# started, nothing else, within 2 s. (Started with & from another script, bash ignores SIGINT in
# it and so cannot trap it: stop it with SIGTERM then.)
#
#   scripts/run-local.sh [--fresh]
#
#   --fresh   drop and recreate the database, forget the saved tokens, the broker's and the
#             bridge's state, then start as on a new machine
#
# Ports, checked free before anything starts: GITO_API_PORT (8000), GITO_LOCAL_MQTT_PORT (11883),
# GITO_EXTERNAL_MQTT_PORT (11884); all on 127.0.0.1.
# Kept across runs: the database GITO_RUN_LOCAL_DB (gito) and the directory GITO_RUN_LOCAL_DIR
# (target/run-local/): admin-token and bridge-token (mode 600, reused by the next run), the
# broker's and the bridge's state, logs/*.log (overwritten by the next run) and run-local.pid.
# GITO_ADMIN_TOKEN, when set, is used instead of the saved admin token.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

fresh=
for arg in "$@"; do
  case "$arg" in
    --fresh) fresh=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $arg (usage: scripts/run-local.sh [--fresh])" ;;
  esac
done

api_port="${GITO_API_PORT:-8000}"
local_port="${GITO_LOCAL_MQTT_PORT:-11883}"
external_port="${GITO_EXTERNAL_MQTT_PORT:-11884}"
tenant="${GITO_TENANT_ID:-01939d2a-0000-7000-8000-000000000001}"
db="${GITO_RUN_LOCAL_DB:-gito}"
state="${GITO_RUN_LOCAL_DIR:-target/run-local}"
started_at=$(date +%s)
roles=("the API" "the local broker" "the external broker")
ports=("$api_port" "$local_port" "$external_port")
port_vars=(GITO_API_PORT GITO_LOCAL_MQTT_PORT GITO_EXTERNAL_MQTT_PORT)
for i in 0 1 2; do
  [[ "${ports[i]}" =~ ^[0-9]+$ ]] && [ "${ports[i]}" -ge 1 ] && [ "${ports[i]}" -le 65535 ] ||
    die "${port_vars[i]}=${ports[i]} is not a port number"
done
[ "$api_port" != "$local_port" ] && [ "$api_port" != "$external_port" ] && [ "$local_port" != "$external_port" ] ||
  die "the three ports must differ: $api_port, $local_port, $external_port"
[[ "$tenant" =~ ^[0-9a-fA-F-]{36}$ ]] || die "GITO_TENANT_ID=$tenant is not a UUID"
[[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] || die "GITO_RUN_LOCAL_DB=$db: use lower-case letters, digits and _"

# --- Is anything else here already? Checked before anything starts. ---------------------------

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# port_open PORT: something accepts connections on 127.0.0.1:PORT (a hung connect counts too).
port_open() {
  local rc=0
  # shellcheck disable=SC2016 # $0 is expanded by the inner bash: the port
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]
}

# is_run_local PID: PID is a scripts/run-local.sh other than this one.
is_run_local() {
  [ "$1" != "$$" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'run-local\.sh'
}

# run_local_of PID: the scripts/run-local.sh that started PID (PID itself or an ancestor).
run_local_of() {
  local pid=$1
  while [ "${pid:-0}" -gt 1 ]; do
    if is_run_local "$pid"; then echo "$pid"; return 0; fi
    pid=$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')
  done
  return 1
}

pid_file="$state/run-local.pid"
# recorded_run_local: the scripts/run-local.sh of $pid_file, when it still runs.
recorded_run_local() {
  local pid
  pid=$(cat "$pid_file" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && is_run_local "$pid" && echo "$pid"
}

check_ports() {
  local i port line pid owner what others=() lines=() same=1 first_owner=
  for i in 0 1 2; do
    port=${ports[i]}
    port_open "$port" || continue
    line=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -m 1 'users:' || true)
    pid=$(sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\),.*/\2/p' <<<"$line")
    owner=
    if [ -n "$pid" ]; then
      owner=$(run_local_of "$pid") || owner=
      what="$(sed -n 's/.*users:(("\([^"]*\)",.*/\1/p' <<<"$line") (pid $pid)"
    else
      # ss shows no process (another user's, without root): the recorded instance, if any.
      owner=$(recorded_run_local) || owner=
      what="a process that ss -ltnp does not name"
    fi
    [ -n "$first_owner" ] || first_owner=${owner:-none}
    [ "${owner:-none}" = "$first_owner" ] || same=0
    [ -n "$owner" ] || same=0
    others+=("$port")
    if [ -n "$owner" ]; then
      lines+=("error: port $port (${roles[i]}, ${port_vars[i]}) is in use by $what of another scripts/run-local.sh (pid $owner): press Ctrl-C there or kill $owner")
    else
      lines+=("error: port $port (${roles[i]}, ${port_vars[i]}) is in use by $what: stop it, or choose another port: ${port_vars[i]}=<port> scripts/run-local.sh")
    fi
  done
  [ "${#others[@]}" -gt 0 ] || return 0
  if [ "$same" = 1 ] && [ "${#others[@]}" -gt 1 ]; then
    local list="${others[*]}"
    echo "error: ports ${list// /, } are in use by another scripts/run-local.sh (pid $first_owner): press Ctrl-C there or kill $first_owner" >&2
  else
    printf '%s\n' "${lines[@]}" >&2
  fi
  exit 1
}
check_ports

mkdir -p "$state/logs"
state=$(cd "$state" && pwd)
pid_file="$state/run-local.pid"
logs="$state/logs"
if other=$(recorded_run_local); then
  die "another scripts/run-local.sh (pid $other) uses $state: press Ctrl-C there or kill $other (a second instance needs other ports, GITO_RUN_LOCAL_DIR and GITO_RUN_LOCAL_DB)"
fi
echo "$$" >"$pid_file"

# --- Everything started from here on is stopped on exit. --------------------------------------

pids=() names=() logs_of=()
# start NAME LOG CMD...: CMD in a session (and process group) of its own, so that stopping the
# group stops what CMD starts too (entrypoint.sh's gito-api, init.sh's mosquitto); output to LOG.
start() {
  local name=$1 log=$2
  shift 2
  setsid "$@" >"$log" 2>&1 </dev/null &
  pids+=("$!") names+=("$name") logs_of+=("$log")
}

# running PID: PID exists and is not a zombie.
running() {
  kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# groups_left PID...: one of those sessions (each started one is its own) still has a live
# process. Zombies do not count: a killed grandchild waits for init to reap it, which can be slow.
groups_left() {
  local pid
  [ "$#" -gt 0 ] || return 1
  if command -v ps >/dev/null; then
    ps -e -o sid=,stat= | awk -v sids=" $* " '$2 !~ /^Z/ && index(sids, " " $1 " ") { found = 1 } END { exit !found }'
    return
  fi
  for pid in "$@"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done
  return 1
}

# terminate DEADLINE PID...: SIGTERM to those process groups, then wait until they are gone or
# the clock (now_ms) reaches DEADLINE.
terminate() {
  local deadline=$1 pid
  shift
  for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  while groups_left "$@" && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.05; done
}

# Stops every process group started: the clients first, while the brokers (started first) still
# take their disconnects (gito-bridge waits 2 s for a broker that is gone), then the brokers;
# SIGKILL to whatever is left after 1.5 s.
stop_all() {
  local t0 pid
  [ "${#pids[@]}" -gt 0 ] || return 0
  t0=$(now_ms)
  terminate $((t0 + 1000)) "${pids[@]:2}"
  terminate $((t0 + 1500)) "${pids[@]:0:2}"
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

release() {
  [ "$(cat "$pid_file" 2>/dev/null)" != "$$" ] || rm -f "$pid_file"
}

on_exit() {
  local status=$?
  trap - EXIT
  trap '' INT TERM HUP
  stop_all
  release
  [ "$status" -eq 0 ] || echo "run-local.sh stopped everything it started; logs kept in $logs/" >&2
  exit "$status"
}

on_signal() {
  trap - EXIT
  trap '' INT TERM HUP
  local t0
  t0=$(now_ms)
  # (|| true: after a SIGHUP the terminal may be gone)
  printf '\nstopping what run-local.sh started\n' 2>/dev/null || true
  stop_all
  release
  echo "stopped in $(($(now_ms) - t0)) ms; logs kept in $logs/" 2>/dev/null || true
  exit 0
}
trap on_exit EXIT
trap on_signal INT TERM HUP

# show_log LOG: its last lines, on stderr.
show_log() {
  { printf '\n--- last 20 lines of %s\n' "$1"; tail -n 20 "$1"; printf -- '---\n'; } >&2
}

# still_up INDEX...: stops with the log shown when one of those started processes exited.
still_up() {
  local i status=0
  for i in "$@"; do
    running "${pids[i]}" && continue
    wait "${pids[i]}" 2>/dev/null || status=$?
    show_log "${logs_of[i]}"
    die "${names[i]} stopped during start-up (exit $status); its log: ${logs_of[i]}"
  done
}

# wait_for SECONDS INDEX CMD...: until CMD succeeds; stops with the log of the started process
# INDEX shown when it exits or SECONDS pass.
wait_for() {
  local seconds=$1 i=$2 deadline
  shift 2
  deadline=$(($(date +%s) + seconds))
  until "$@"; do
    still_up "$i"
    if [ "$(date +%s)" -ge "$deadline" ]; then
      show_log "${logs_of[i]}"
      die "${names[i]} not ready within $seconds s; its log: ${logs_of[i]}"
    fi
    sleep 0.1
  done
}

# --- PostgreSQL, Mosquitto, the database, the tokens. -----------------------------------------

# Administrative statements go to the maintenance database, never to $db itself (which --fresh
# drops), even when DATABASE_URL names it (the banner's export line does).
PG_URL="$(database_url postgres)"
command -v cargo >/dev/null || die "cargo not found: install Rust $(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml) or newer (https://rustup.rs)"
ensure_postgres
ensure_mosquitto
command -v curl >/dev/null || apt_install curl

step "database $db"
if [ -n "$fresh" ]; then
  psql_admin -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
  rm -rf "$state/admin-token" "$state/bridge-token" "$state/broker" "$state/spool"
  echo "--fresh: dropped; saved tokens, broker and spool state forgotten"
fi
if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
  psql_admin -c "CREATE DATABASE \"$db\""
  echo "created"
else
  echo "exists, kept from an earlier run (scripts/run-local.sh --fresh starts clean)"
fi
database_url="$(database_url "$db")"

step "tokens"
hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
# saved FILE REGEX: the token kept in FILE, if it has the right shape.
saved() {
  local value
  value=$(cat "$1" 2>/dev/null) || return 1
  grep -Eqx "$2" <<<"$value" || return 1
  chmod 600 "$1"
  printf '%s' "$value"
}
# keep FILE VALUE: saves VALUE in FILE, readable by this user only.
keep() {
  (umask 077 && printf '%s\n' "$2" >"$1.new" && mv "$1.new" "$1")
}
if [ -n "${GITO_ADMIN_TOKEN:-}" ]; then
  admin_token=$GITO_ADMIN_TOKEN
  echo "admin token: GITO_ADMIN_TOKEN"
elif admin_token=$(saved "$state/admin-token" '.{32,}'); then
  echo "admin token: kept in $state/admin-token"
else
  admin_token=$(hex 32)
  keep "$state/admin-token" "$admin_token"
  echo "admin token: new, kept in $state/admin-token"
fi
if bridge_token=$(saved "$state/bridge-token" 'gito_[0-9a-f]{16}_[0-9a-f]{64}'); then
  echo "bridge token: kept in $state/bridge-token (entrypoint.sh finds it registered)"
else
  bridge_token="gito_$(hex 8)_$(hex 32)"
  keep "$state/bridge-token" "$bridge_token"
  echo "bridge token: new, kept in $state/bridge-token (entrypoint.sh registers it)"
fi
api_password="local-api-$(hex 12)"
bridge_password="local-bridge-$(hex 12)"

step "build (release)"
# In the background, so that Ctrl-C and SIGTERM stop it at once too.
setsid cargo build --release --locked --bin gito-api --bin gito-bridge </dev/null &
pids+=("$!")
wait "${pids[-1]}" || die "the build failed (see above)"
pids=()
export PATH="$PWD/target/release:$PATH"

step "brokers on :$local_port (local) and :$external_port (external)"
broker_dir="$state/broker"
mkdir -p "$broker_dir/data"
chmod 755 "$state" "$broker_dir"
chmod 777 "$broker_dir/data"
{
  sed -e "s#/mosquitto/#$broker_dir/#g" -e "s#^listener 1883\$#listener $local_port 127.0.0.1#" \
    -e "s#^log_dest stdout\$#log_dest stderr#" mosquitto/mosquitto.conf
  # Started as root, mosquitto becomes the user mosquitto, which cannot reach a directory under a
  # private one (a repository in /root): it stays root then.
  if [ "$(id -u)" -eq 0 ] && id mosquitto >/dev/null 2>&1 && ! runuser -u mosquitto -- test -w "$broker_dir/data" 2>/dev/null; then
    echo "user root"
  fi
} >"$broker_dir/mosquitto.conf"
start "the local broker" "$logs/broker.log" env MQTT_API_PASSWORD="$api_password" MQTT_BRIDGE_PASSWORD="$bridge_password" \
  GITO_TENANT_ID="$tenant" MOSQUITTO_AUTH_DIR="$broker_dir/auth" MOSQUITTO_CONF="$broker_dir/mosquitto.conf" sh mosquitto/init.sh
printf 'listener %s 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n' "$external_port" >"$broker_dir/external.conf"
start "the external broker" "$logs/external.log" mosquitto -c "$broker_dir/external.conf"
wait_for 15 0 port_open "$local_port"
wait_for 15 1 port_open "$external_port"
echo "listening"

step "gito-api on :$api_port (entrypoint.sh: migrations, tenant, bridge token, serve)"
api_log="$logs/api.log"
# The readiness check needs the "gito-api listening" line: keep it through a quieter RUST_LOG.
start "gito-api" "$api_log" env DATABASE_URL="$database_url" GITO_API_ADDR="127.0.0.1:$api_port" GITO_TENANT_ID="$tenant" \
  GITO_TENANT_NAME=demo GITO_ADMIN_TOKEN="$admin_token" GITO_BRIDGE_API_TOKEN="$bridge_token" \
  GITO_MQTT_URL="mqtt://gito-api:$api_password@127.0.0.1:$local_port" ${RUST_LOG:+"RUST_LOG=$RUST_LOG,gito_api::startup=info"} \
  ./entrypoint.sh
api_i=$((${#pids[@]} - 1)) api_pid=${pids[-1]}
# Ready means: this run's gito-api is alive, logged that it listens on this port, and /ready
# answers 2xx (so not some other process that answers on the port).
api_ready() {
  grep 'gito-api listening' "$api_log" 2>/dev/null | grep -Eq "127\.0\.0\.1:$api_port([^0-9]|\$)" &&
    curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$api_port/ready"
}
wait_for 120 "$api_i" api_ready
echo "ready (pid $api_pid); $(grep -m 1 '^token bridge' "$api_log" || true)"
stale=$(psql "$database_url" -v ON_ERROR_STOP=1 -qAt -c "SELECT count(*) FROM api_tokens WHERE tenant_id = '$tenant' AND name = 'bridge' AND key_id <> '${bridge_token:5:16}'" || echo 0)
if [ "${stale:-0}" -gt 0 ]; then
  echo "note: $stale other token(s) named bridge for the tenant, left by earlier versions of this script; revoke them with"
  echo "  psql '$database_url' -c \"DELETE FROM api_tokens WHERE tenant_id = '$tenant' AND name = 'bridge' AND key_id <> '${bridge_token:5:16}'\""
fi

step "gito-bridge and the simulator"
start "gito-bridge" "$logs/bridge.log" env GITO_EXTERNAL_MQTT_URL="mqtt://127.0.0.1:$external_port" \
  GITO_LOCAL_MQTT_URL="mqtt://gito-bridge:$bridge_password@127.0.0.1:$local_port" GITO_API_URL="http://127.0.0.1:$api_port" \
  GITO_API_TOKEN="$bridge_token" GITO_TENANT_ID="$tenant" GITO_BRIDGE_SPOOL_DIR="$state/spool" gito-bridge
start "the simulator" "$logs/simulator.log" gito-bridge simulate --broker "mqtt://127.0.0.1:$external_port" --devices 30 --rate 20

# count_devices: the tenant's devices, every page.
count_devices() {
  local cursor='' page n=0
  while :; do
    page=$(curl -sf --max-time 2 -H "Authorization: Bearer $bridge_token" \
      "http://127.0.0.1:$api_port/tenants/$tenant/devices?limit=1000${cursor:+&cursor=$cursor}") || return 1
    n=$((n + $(grep -o '"created_at"' <<<"$page" | wc -l)))
    cursor=$(grep -o '"next_cursor":"[^"]*"' <<<"$page" | cut -d'"' -f4 || true)
    [ -n "$cursor" ] || break
  done
  echo "$n"
}
# Until the count stopped growing for 1 s (at most 3 s after the first device, 15 s in all).
count=0
t0=$(now_ms) changed=$t0 first=
while :; do
  still_up "${!pids[@]}"
  n=$(count_devices) || n=$count
  t=$(now_ms)
  if [ "$n" != "$count" ]; then count=$n changed=$t; fi
  if [ "$count" -gt 0 ] && [ -z "$first" ]; then first=$t; fi
  if [ -n "$first" ] && { [ $((t - changed)) -ge 1000 ] || [ $((t - first)) -ge 3000 ]; }; then break; fi
  [ $((t - t0)) -lt 15000 ] || break
  sleep 0.2
done

cat <<INFO

gito is running ($(($(date +%s) - started_at)) s to here). Ctrl-C stops it.

  API            http://127.0.0.1:$api_port      (health: /health, ready: /ready, docs: /docs)
  tenant         $tenant
  environment    export DATABASE_URL=$(printf %q "$database_url") PATH=$(printf %q "$PWD/target/release"):\$PATH
                 (then the README's commands run as written, e.g. gito-api migrate current)
  tokens         export GITO_ADMIN_TOKEN=$admin_token
                 export GITO_TOKEN=$bridge_token   # the tenant's, used by the bridge
                 (both kept in $state/ and reused by the next run)
  devices        curl -s -H "Authorization: Bearer \$GITO_TOKEN" 'http://127.0.0.1:$api_port/tenants/$tenant/devices?limit=5'
  unclassified   curl -s -H "Authorization: Bearer \$GITO_TOKEN" 'http://127.0.0.1:$api_port/tenants/$tenant/devices?unassigned=true'
  live updates   ws://127.0.0.1:$api_port/tenants/$tenant/ws?token=\$GITO_TOKEN
  brokers        local mqtt://127.0.0.1:$local_port (users gito-api, gito-bridge), external mqtt://127.0.0.1:$external_port
  logs           $logs/{api,bridge,simulator,broker,external}.log (kept after exit)
  persists       database $db and $state/ across runs; scripts/run-local.sh --fresh starts clean

Devices discovered so far: $count
INFO

# Until Ctrl-C (the trap), or until something stops by itself: then say what, and stop the rest.
while :; do
  status=0
  wait -n || status=$?
  for i in "${!pids[@]}"; do
    if ! running "${pids[i]}"; then
      show_log "${logs_of[i]}"
      die "${names[i]} stopped (exit $status); its log: ${logs_of[i]}"
    fi
  done
done
