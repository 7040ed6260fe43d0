#!/bin/sh
# gito container entry point.
#   (no command) or `serve`: wait for PostgreSQL while it is unreachable or starting up (gito-api
#   exits with 3 then; a missing database, a refused login or any other error stops at once, with
#   gito-api's own reason), run `gito-api migrate up` (a failure is shown in
#   `docker logs` and stops the container), create the tenant GITO_TENANT_ID if set and register
#   GITO_BRIDGE_API_TOKEN as its token if set, then `exec gito-api serve`.
#   Anything else runs as is: `gito-bridge`, `gito-api migrate current`, a shell.
set -eu

if [ "$#" -gt 0 ] && [ "$1" != "serve" ]; then
  exec "$@"
fi

attempts="${GITO_DB_WAIT_ATTEMPTS:-30}"
interval="${GITO_DB_WAIT_INTERVAL:-2}"
error_file=$(mktemp)
trap 'rm -f "$error_file"' EXIT

i=1
until gito-api migrate current >/dev/null 2>"$error_file"; do
  status=$?
  if [ "$status" -ne 3 ]; then
    # Waiting cannot cure this one: say gito-api's reason and stop.
    echo "entrypoint: cannot use the database: $(tail -n 1 "$error_file")" >&2
    exit 1
  fi
  if [ "$i" -ge "$attempts" ]; then
    echo "entrypoint: PostgreSQL not reachable after $attempts attempts: $(tail -n 1 "$error_file")" >&2
    exit 1
  fi
  echo "entrypoint: waiting for PostgreSQL ($i/$attempts): $(tail -n 1 "$error_file")" >&2
  i=$((i + 1))
  sleep "$interval"
done

if ! gito-api migrate up; then
  echo "entrypoint: migration failed; not starting gito-api (see docs/MIGRATIONS.md, Troubleshooting)" >&2
  exit 1
fi

if [ -n "${GITO_TENANT_ID:-}" ]; then
  gito-api tenant ensure --id "$GITO_TENANT_ID" --name "${GITO_TENANT_NAME:-default}"
  if [ -n "${GITO_BRIDGE_API_TOKEN:-}" ]; then
    gito-api token ensure --tenant-id "$GITO_TENANT_ID" --name bridge
  fi
fi

rm -f "$error_file"
trap - EXIT
exec gito-api serve
