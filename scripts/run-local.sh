#!/usr/bin/env bash
# Runs the whole of gito on this machine, without Docker: PostgreSQL and Mosquitto (installed with
# apt-get when missing), gito's local broker (mosquitto/mosquitto.conf, with authentication), a
# second Mosquitto standing in for the plant's "external" broker, gito-api (migrating on boot, via
# entrypoint.sh), gito-bridge and the simulator. Ctrl-C stops everything it started, nothing else.
#
# Ports (override with the variables): API 8000, local broker 11883, external broker 11884.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

api_port="${GITO_API_PORT:-8000}"
local_port="${GITO_LOCAL_MQTT_PORT:-11883}"
external_port="${GITO_EXTERNAL_MQTT_PORT:-11884}"
tenant="${GITO_TENANT_ID:-01939d2a-0000-7000-8000-000000000001}"
api_password="local-api-$RANDOM$RANDOM"
bridge_password="local-bridge-$RANDOM$RANDOM"
# Tokens for this run (README, "Tokens"): export GITO_ADMIN_TOKEN to keep your own.
admin_token="${GITO_ADMIN_TOKEN:-$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')}"
bridge_token="gito_$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')_$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
started_at=$(date +%s)

ensure_postgres
ensure_mosquitto
step "database gito"
if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'gito'")" ]; then
  psql_admin -c "CREATE DATABASE gito"
fi
database_url="$(database_url gito)"

run_dir=$(mktemp -d)
chmod 755 "$run_dir"
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "stopping what run-local.sh started"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run_dir"
}
trap cleanup EXIT INT TERM

step "build (release)"
cargo build --release --locked --bin gito-api --bin gito-bridge
export PATH="$PWD/target/release:$PATH"

step "brokers"
mkdir -p "$run_dir/data"
chmod 777 "$run_dir/data"
sed -e "s#/mosquitto/#$run_dir/#g" -e "s#^listener 1883\$#listener $local_port 127.0.0.1#" \
  -e "s#^log_dest stdout#log_dest file $run_dir/data/mosquitto.log#" mosquitto/mosquitto.conf > "$run_dir/mosquitto.conf"
MQTT_API_PASSWORD="$api_password" MQTT_BRIDGE_PASSWORD="$bridge_password" GITO_TENANT_ID="$tenant" \
  MOSQUITTO_AUTH_DIR="$run_dir/auth" MOSQUITTO_CONF="$run_dir/mosquitto.conf" sh mosquitto/init.sh &
pids+=($!)
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$external_port" > "$run_dir/external.conf"
mosquitto -c "$run_dir/external.conf" 2>"$run_dir/external.log" &
pids+=($!)

step "gito-api on :$api_port"
DATABASE_URL="$database_url" GITO_API_ADDR="127.0.0.1:$api_port" GITO_TENANT_ID="$tenant" GITO_TENANT_NAME=demo \
  GITO_ADMIN_TOKEN="$admin_token" GITO_BRIDGE_API_TOKEN="$bridge_token" GITO_MQTT_URL="mqtt://gito-api:$api_password@127.0.0.1:$local_port" ./entrypoint.sh 2>"$run_dir/api.log" &
pids+=($!)
wait_ready "http://127.0.0.1:$api_port/ready" "${pids[-1]}" "$run_dir/api.log"

step "gito-bridge and the simulator"
GITO_EXTERNAL_MQTT_URL="mqtt://127.0.0.1:$external_port" GITO_LOCAL_MQTT_URL="mqtt://gito-bridge:$bridge_password@127.0.0.1:$local_port" \
  GITO_API_URL="http://127.0.0.1:$api_port" GITO_API_TOKEN="$bridge_token" GITO_TENANT_ID="$tenant" GITO_BRIDGE_SPOOL_DIR="$run_dir/spool" \
  gito-bridge 2>"$run_dir/bridge.log" &
pids+=($!)
gito-bridge simulate --broker "mqtt://127.0.0.1:$external_port" --devices 30 --rate 20 >/dev/null 2>"$run_dir/simulator.log" &
pids+=($!)

for _ in $(seq 1 100); do
  count=$(curl -sf -H "Authorization: Bearer $bridge_token" "http://127.0.0.1:$api_port/tenants/$tenant/devices?limit=1000" | grep -o '"external_id"' | wc -l || true)
  [ "${count:-0}" -gt 0 ] && break
  sleep 0.1
done

cat <<INFO

gito is running ($(( $(date +%s) - started_at )) s to here). Ctrl-C stops it.

  API            http://127.0.0.1:$api_port      (health: /health, ready: /ready, docs: /docs)
  tenant         $tenant
  tokens         export GITO_ADMIN_TOKEN=$admin_token
                 export GITO_TOKEN=$bridge_token   (the tenant's, used by the bridge)
  devices        curl -s -H "Authorization: Bearer \$GITO_TOKEN" 'http://127.0.0.1:$api_port/tenants/$tenant/devices?limit=5'
  unclassified   curl -s -H "Authorization: Bearer \$GITO_TOKEN" 'http://127.0.0.1:$api_port/tenants/$tenant/devices?unassigned=true'
  live updates   ws://127.0.0.1:$api_port/tenants/$tenant/ws?token=\$GITO_TOKEN
  brokers        local mqtt://127.0.0.1:$local_port (users gito-api, gito-bridge), external mqtt://127.0.0.1:$external_port
  logs           $run_dir/{api,bridge,simulator}.log

Devices discovered so far: ${count:-0}
INFO
wait "${pids[2]}"
