#!/usr/bin/env python3
"""The deployment, checked without a Docker engine.

Reads docker-compose.yml and .env.example and starts what the `mosquitto`, `api` and `bridge`
services run (mosquitto/init.sh, entrypoint.sh, `entrypoint.sh gito-bridge`) with exactly the
environment compose gives them, service host names mapped to local ports, plus an external broker
and the demo simulator. Then checks that they come up and data flows, and that entrypoint.sh stops
with the error shown when a migration fails. A renamed variable breaks this test, not production.

Usage: scripts/compose_smoke.py [target/debug]   (PostgreSQL server from $GITO_TEST_DATABASE_URL)
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug"))
PG = os.environ.get("GITO_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
checks = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    checks["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + detail}", flush=True)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_file(path):
    values = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values


def interpolate(value, env):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}."""
    def one(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise SystemExit(f"compose: {name} unset: {arg}")
        return ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, str(value))


def service_env(compose, name, env):
    return {k: interpolate(v, env) for k, v in (compose["services"][name].get("environment") or {}).items()}


def rehost(value, hosts):
    for host, local in hosts.items():
        value = value.replace(f"@{host}:", f"@{local}:").replace(f"//{host}:", f"//{local}:")
        for port, local_port in PORTS.get(host, {}).items():
            value = value.replace(f"{local}:{port}", f"{local}:{local_port}")
    return value


def psql(sql, url=PG):
    return subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql], check=True, capture_output=True, text=True).stdout


def wait(what, predicate, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(0.2)
    return check(what, False, f"not within {deadline} s")


def get_json(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def http_status(url, token=None):
    try:
        return get_json(url, token) and 200
    except urllib.error.HTTPError as error:
        return error.code


def mqtt_pub(port, user, password, topic, client_id):
    """mosquitto_pub at QoS 1: returns (exit code, output). It waits for the PUBACK."""
    args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-i", client_id, "-q", "1", "-t", topic, "-m", "1"]
    if user:
        args += ["-u", user, "-P", password]
    result = subprocess.run(args, capture_output=True, text=True, timeout=15)
    return result.returncode, result.stdout + result.stderr


def acl_probe(port, reader, writer, own_topic, other_topic, client_id):
    """`reader` subscribes to both topics, then `writer` publishes to the other one first and to
    its own second. The broker keeps order: if the first message seen is on the own topic, the
    other one was dropped by the ACL. Returns (own exit code, other exit code, the topics that
    arrived, the subscriber's transcript)."""
    subscriber = subprocess.Popen(
        # Line-buffered: SUBACK must be seen when it happens, not when the pipe's buffer fills.
        ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-i", f"{client_id}-sub", "-u", reader[0], "-P", reader[1],
         "-q", "1", "-t", own_topic, "-t", other_topic, "-v", "-d", "-C", "1", "-W", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in subscriber.stdout:
        lines.append(line.rstrip())
        if "SUBACK" in line:
            break
    other_code, _ = mqtt_pub(port, *writer, other_topic, f"{client_id}-other")
    own_code, _ = mqtt_pub(port, *writer, own_topic, f"{client_id}-own")
    rest, _ = subscriber.communicate(timeout=30)
    lines += rest.splitlines()
    received = [line.rsplit(" ", 1)[0] for line in lines if line.endswith(" 1") and line.split(" ", 1)[0] in (own_topic, other_topic)]
    return own_code, other_code, received, "\n".join(lines)[-800:]


def mqtt_acl_checks(port, env, tenant):
    """The local broker's users and ACL, as init.sh generated them from the compose environment."""
    code, out = mqtt_pub(port, "gito-bridge", "not-the-password", f"{tenant}/devices/x/telemetry", "smoke-wrong")
    check("mqtt: wrong credentials are refused", code != 0 and "not authori" in out.lower(), out)
    code, out = mqtt_pub(port, None, None, f"{tenant}/devices/x/telemetry", "smoke-anonymous")
    check("mqtt: anonymous clients are refused", code != 0 and "not authori" in out.lower(), out)

    # The processor's user sees both topics; the bridge's user publishes to another tenant's
    # prefix, then to its own. The broker keeps order: if the first message seen is the bridge's
    # own, the other one was dropped by the ACL.
    other = "01939d2a-0000-7000-8000-00000000beef"
    own_topic, other_topic = f"{tenant}/devices/acl-probe/telemetry", f"{other}/devices/acl-probe/telemetry"
    api_user = ("gito-api", env["MQTT_API_PASSWORD"])
    bridge_user = ("gito-bridge", env["MQTT_BRIDGE_PASSWORD"])
    own_code, other_code, received, transcript = acl_probe(port, api_user, bridge_user, own_topic, other_topic, "smoke-acl")
    check("mqtt: the bridge's user publishes under its tenant's prefix", own_code == 0 and received[:1] == [own_topic], transcript)
    check("mqtt: the bridge's user cannot publish under another tenant's prefix", other_code == 0 and other_topic not in received, "\n".join(received))

    # Device events: gito-api announces, the bridge's user reads its own tenant's only.
    own_events, other_events = f"{tenant}/device-events", f"{other}/device-events"
    own_code, other_code, received, transcript = acl_probe(port, bridge_user, api_user, own_events, other_events, "smoke-acl-events")
    check("mqtt: gito-api announces device events and the bridge's user reads its own tenant's only",
          other_code == 0 and own_code == 0 and received == [own_events], transcript)


compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))
dotenv = env_file(os.path.join(ROOT, ".env.example"))
pg_host, pg_port = re.match(r"postgres(?:ql)?://[^@]*@?([^:/]+):?(\d*)/", PG).groups()
PORTS = {"postgres": {"5432": pg_port or "5432"}, "mosquitto": {"1883": str(free_port())},
         "external-broker": {"1883": str(free_port())}, "api": {"8000": str(free_port())}}
HOSTS = {"postgres": pg_host, "mosquitto": "127.0.0.1", "external-broker": "127.0.0.1", "api": "127.0.0.1"}
work = tempfile.mkdtemp(prefix="gito-compose-smoke-")
os.chmod(work, 0o755)
processes = []
base_env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": work}


def start(args, env, log):
    process = subprocess.Popen(args, env={**base_env, **env}, stdout=open(os.path.join(work, log), "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    processes.append(process)
    return process


try:
    # PostgreSQL: the compose user and password on the test server, a database of our own.
    api_env = {k: rehost(v, HOSTS) for k, v in service_env(compose, "api", dotenv).items()}
    user, password = re.match(r"postgres://([^:]+):([^@]+)@", api_env["DATABASE_URL"]).groups()
    psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN CREATE ROLE {user} LOGIN; END IF; END $$;")
    psql(f"ALTER ROLE {user} PASSWORD '{password}'")
    database = "gito_compose_smoke"
    psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    psql(f"CREATE DATABASE {database} OWNER {user}")
    api_env["DATABASE_URL"] = re.sub(r"/gito$", f"/{database}", api_env["DATABASE_URL"])

    # The local broker as the mosquitto service runs it: mosquitto/init.sh and mosquitto.conf.
    data = os.path.join(work, "data")
    os.makedirs(data)
    os.chmod(data, 0o777)
    conf = open(os.path.join(ROOT, "mosquitto", "mosquitto.conf")).read().replace("/mosquitto/", work + "/")
    conf = conf.replace("listener 1883", f"listener {PORTS['mosquitto']['1883']} 127.0.0.1").replace("log_dest stdout", f"log_dest file {data}/mosquitto.log")
    open(os.path.join(work, "mosquitto.conf"), "w").write(conf)
    mosquitto_env = service_env(compose, "mosquitto", dotenv)
    mosquitto_env.update(MOSQUITTO_AUTH_DIR=os.path.join(work, "auth"), MOSQUITTO_CONF=os.path.join(work, "mosquitto.conf"))
    start(["sh", "mosquitto/init.sh"], mosquitto_env, "mosquitto.out")
    open(os.path.join(work, "external.conf"), "w").write(f"listener {PORTS['external-broker']['1883']} 127.0.0.1\nallow_anonymous true\n")
    start(["mosquitto", "-c", os.path.join(work, "external.conf")], {}, "external.out")

    api_port = PORTS["api"]["8000"]
    api_env["GITO_API_ADDR"] = f"127.0.0.1:{api_port}"  # compose binds 0.0.0.0:8000 inside its network
    start([os.path.join(ROOT, "entrypoint.sh")], api_env, "api.log")
    check("api: entrypoint.sh migrates and serves (/ready)", wait("api ready", lambda: get_json(f"http://127.0.0.1:{api_port}/ready")["status"] == "ready", 90))

    bridge_env = {k: rehost(v, HOSTS) for k, v in service_env(compose, "bridge", dotenv).items()}
    bridge_env["GITO_BRIDGE_SPOOL_DIR"] = os.path.join(work, "spool")
    metrics = free_port()
    bridge_env["GITO_BRIDGE_METRICS_ADDR"] = f"127.0.0.1:{metrics}"
    start([os.path.join(ROOT, "entrypoint.sh")] + compose["services"]["bridge"]["command"], bridge_env, "bridge.log")
    check("bridge: subscribed", wait("bridge subscribed", lambda: "gito_bridge_external_connected 1" in urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics").read().decode().splitlines()))

    simulator = [rehost(a, HOSTS) for a in compose["services"]["simulator"]["command"]] + ["--duration", "20"]
    start([os.path.join(ROOT, "entrypoint.sh")] + simulator, {}, "simulator.log")
    tenant = dotenv["GITO_TENANT_ID"]
    token = bridge_env["GITO_API_TOKEN"]  # registered for the tenant by entrypoint.sh
    devices_url = f"http://127.0.0.1:{api_port}/tenants/{tenant}/devices?limit=1000"
    check("devices discovered through the bridge", wait("devices", lambda: len(get_json(devices_url, token)["items"]) >= 5))

    def stored():
        device = get_json(devices_url, token)["items"][0]["id"]
        return len(get_json(f"http://127.0.0.1:{api_port}/tenants/{tenant}/devices/{device}/latest", token)) > 0
    check("telemetry stored by the processor (through the authenticated broker)", wait("telemetry", stored))
    check("api: no token, 401", http_status(devices_url) == 401)
    check("api: the bridge's token may not list tenants (403)", http_status(f"http://127.0.0.1:{api_port}/tenants", token) == 403)
    check("api: the admin token lists tenants", http_status(f"http://127.0.0.1:{api_port}/tenants", api_env["GITO_ADMIN_TOKEN"]) == 200)
    mqtt_acl_checks(PORTS["mosquitto"]["1883"], mosquitto_env, tenant)

    # A broken migration: the table 006 creates already exists. entrypoint.sh must stop, loudly.
    broken = "gito_compose_broken"
    psql(f"DROP DATABASE IF EXISTS {broken} WITH (FORCE)")
    psql(f"CREATE DATABASE {broken} OWNER {user}")
    broken_url = re.sub(r"/gito_compose_smoke$", f"/{broken}", api_env["DATABASE_URL"])
    subprocess.run(["gito-api", "migrate", "up", "--to", "005"], env={**base_env, "DATABASE_URL": broken_url}, check=True, capture_output=True)
    psql("CREATE TABLE alert_rules (id int)", re.sub(r"/[^/]+$", f"/{broken}", PG))
    result = subprocess.run([os.path.join(ROOT, "entrypoint.sh")], env={**base_env, **api_env, "DATABASE_URL": broken_url, "GITO_API_ADDR": f"127.0.0.1:{free_port()}"},
                            capture_output=True, text=True, timeout=60)
    shown = "migration 006_telemetry_ingest_and_alerts" in result.stderr and "already exists" in result.stderr
    check("entrypoint.sh exits non-zero with the failed migration shown", result.returncode != 0 and shown, result.stderr[-500:])
    unreachable = subprocess.run([os.path.join(ROOT, "entrypoint.sh")], env={**base_env, "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none", "GITO_DB_WAIT_ATTEMPTS": "2", "GITO_DB_WAIT_INTERVAL": "0.1"},
                                 capture_output=True, text=True, timeout=60)
    check("entrypoint.sh gives up on an unreachable database with a clear message", unreachable.returncode != 0 and "PostgreSQL not reachable after 2 attempts" in unreachable.stderr, unreachable.stderr[-300:])
finally:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    if checks["failed"]:
        for log in sorted(os.listdir(work)):
            path = os.path.join(work, log)
            if os.path.isfile(path):
                print(f"--- {log} (last lines)\n" + "".join(open(path, errors="replace").readlines()[-15:]))
    shutil.rmtree(work, ignore_errors=True)
    for db in ("gito_compose_smoke", "gito_compose_broken"):
        subprocess.run(["psql", PG, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)

print(f"compose-smoke: {checks['passed']} passed, {checks['failed']} failed")
sys.exit(1 if checks["failed"] else 0)
