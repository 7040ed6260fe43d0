#!/bin/sh
# Entry point of the mosquitto container: writes the password file and the ACL from the
# environment, then runs the broker. Nothing secret is kept in the repository.
#
#   MQTT_API_PASSWORD      user gito-api: reads every tenant's telemetry (processor, live push),
#                          publishes alert events and device events (deleted devices)
#   MQTT_BRIDGE_PASSWORD   user gito-bridge: may publish only under its tenant's prefix, and read
#                          its tenant's device events
#   GITO_TENANT_ID         that tenant
#   MOSQUITTO_AUTH_DIR     where the files go (default /mosquitto/auth)
#   MOSQUITTO_CONF         the configuration to run (default /mosquitto/config/mosquitto.conf)
set -eu

: "${MQTT_API_PASSWORD:?MQTT_API_PASSWORD is required}"
: "${MQTT_BRIDGE_PASSWORD:?MQTT_BRIDGE_PASSWORD is required}"
: "${GITO_TENANT_ID:?GITO_TENANT_ID is required}"
auth_dir="${MOSQUITTO_AUTH_DIR:-/mosquitto/auth}"
conf="${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}"

mkdir -p "$auth_dir"
umask 077
rm -f "$auth_dir/passwd"
touch "$auth_dir/passwd"
mosquitto_passwd -b "$auth_dir/passwd" gito-api "$MQTT_API_PASSWORD"
mosquitto_passwd -b "$auth_dir/passwd" gito-bridge "$MQTT_BRIDGE_PASSWORD"
cat > "$auth_dir/acl" <<ACL
user gito-api
topic read +/devices/+/telemetry
topic write +/alerts
topic read +/alerts
topic write +/device-events

user gito-bridge
topic write ${GITO_TENANT_ID}/devices/+/telemetry
topic read ${GITO_TENANT_ID}/device-events
ACL
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
  chown -R mosquitto "$auth_dir"
fi
exec mosquitto -c "$conf"
