#!/usr/bin/env python3
"""scripts/run-local.sh, checked from the outside: the first hour of a new user (issue 13).

Runs the real script several times, on free ports, with a state directory and a database of its
own (GITO_RUN_LOCAL_DIR=target/run-local-test, GITO_RUN_LOCAL_DB=gito_run_local_test) so that a
developer's own run (port 8000, target/run-local/, database gito) is not disturbed, and checks:
a normal start and what its banner prints (the export line, the tokens, the device count); a
second instance fails fast and leaves the first alone; Ctrl-C and SIGTERM stop everything within
2 s; a port held by an unrelated listener; a crash at start-up keeps and shows the log; the
bridge token is reused across runs and --fresh starts clean.

Usage: scripts/run_local_test.py   (builds the release binaries first if needed)
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = os.path.join(ROOT, "target", "run-local-test")
DB = "gito_run_local_test"
PG = "postgres://postgres@127.0.0.1:5432/postgres"
TENANT = "01939d2a-0000-7000-8000-000000000001"
START_DEADLINE = 600  # a start rebuilds when the sources changed since the first build
checks = {"passed": 0, "failed": 0}
runs = []


def check(name, ok, detail=""):
    checks["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + detail}", flush=True)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def psql(sql, db="postgres"):
    url = PG.rsplit("/", 1)[0] + "/" + db
    return subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql], check=True, capture_output=True, text=True).stdout.strip()


def http_status(url, token):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError as error:
        return str(error)


def poll(predicate, deadline):
    """True as soon as predicate() is, False after deadline seconds."""
    end = time.time() + deadline
    while time.time() < end:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


def marked_processes():
    """Live processes started by one of our runs: they carry GITO_RUN_LOCAL_DIR=STATE."""
    marker = f"GITO_RUN_LOCAL_DIR={STATE}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
                stat = open(f"/proc/{pid}/stat").read()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
                    found.append(f"{pid} {cmdline}")
        except OSError:
            pass
    return found


def descendants(root):
    """Pids of every live descendant of root."""
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(pid))
        except (OSError, IndexError, ValueError):
            pass
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Run:
    """One scripts/run-local.sh, its output collected as it comes."""

    def __init__(self, ports, *args, **env):
        self.ports = ports
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GITO_") and k not in ("DATABASE_URL", "RUST_LOG")}
        self.env.update(GITO_API_PORT=str(ports[0]), GITO_LOCAL_MQTT_PORT=str(ports[1]), GITO_EXTERNAL_MQTT_PORT=str(ports[2]),
                        GITO_RUN_LOCAL_DIR=STATE, GITO_RUN_LOCAL_DB=DB, **env)
        self.started = time.time()
        # SIGINT as at a terminal: not ignored, even when this test runs in the background (a
        # shell ignores SIGINT in what it starts with &, and bash cannot trap an ignored signal).
        self.process = subprocess.Popen(["bash", "scripts/run-local.sh", *args], cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        runs.append(self)

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self):
        return "\n".join(self.lines)

    def wait_for(self, text, deadline):
        """Seconds until text appeared in the output, None if it did not (or the script ended)."""
        seen = lambda: any(text in line for line in self.lines)
        poll(lambda: seen() or self.process.poll() is not None, deadline)
        self.process.poll() is None or self.reader.join(5)
        return time.time() - self.started if seen() else None

    def finish(self, deadline):
        """The exit code once the script ended (None if it did not within deadline)."""
        try:
            code = self.process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            return None
        self.reader.join(5)
        return code

    def banner(self, name):
        for line in self.lines:
            match = re.search(rf"export {name}=(\S+)", line)
            if match:
                return match.group(1)
        return None

    def stop(self, sig, deadline=10):
        """Sends sig to the script alone; (exit code, seconds until it ended)."""
        sent = time.time()
        self.process.send_signal(sig)
        code = self.finish(deadline)
        return code, time.time() - sent


def stopped_cleanly(name, run, sig, kids):
    code, took = run.stop(sig)
    check(f"{name}: the script exits 0 (got {code})", code == 0, run.output[-600:])
    check(f"{name}: stopped within 2 s ({took:.2f} s)", took < 2.0)
    check(f"{name}: its ports are free again", poll(lambda: all(port_free(p) for p in run.ports), 1), str(run.ports))
    left = [pid for pid in kids if alive(pid)] + marked_processes()
    check(f"{name}: no process it started is left ({len(kids)} watched)", not left, "\n".join(map(str, left)))
    check(f"{name}: its pid file is gone", not os.path.exists(os.path.join(STATE, "run-local.pid")))


def started(name, run):
    took = run.wait_for("gito is running", START_DEADLINE)
    check(f"{name}: reaches 'gito is running'" + (f" ({took:.1f} s)" if took else ""), took is not None, run.output[-2000:])
    return took


def bridge_tokens():
    return int(psql(f"SELECT count(*) FROM api_tokens WHERE tenant_id = '{TENANT}' AND name = 'bridge'", DB))


def main():
    step_started = time.time()
    build = subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "gito-api", "--bin", "gito-bridge"], cwd=ROOT,
                           capture_output=True, text=True)
    if not check(f"release build ({time.time() - step_started:.0f} s)", build.returncode == 0, build.stderr[-2000:]):
        return
    shutil.rmtree(STATE, ignore_errors=True)
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    ports = [free_port(), free_port(), free_port()]
    head = sorted(f for f in os.listdir(os.path.join(ROOT, "migrations")) if f.endswith(".up.sql"))[-1].removesuffix(".up.sql")

    # 1. A normal start, and what its banner says.
    first = Run(ports)
    first_took = started("start", first)
    if first_took is None:
        return
    export = next((line.strip() for line in first.lines if "export DATABASE_URL=" in line), "")
    export = export[export.index("export"):] if export else ""
    current = subprocess.run(["bash", "-c", f"{export} && cd /tmp && gito-api migrate current"], env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
                             capture_output=True, text=True, timeout=30)
    check(f"banner: '{export[:60]}...' then 'gito-api migrate current' prints the head ({head})",
          current.returncode == 0 and f"{head} (head)" in current.stdout, f"{export!r}: {current.stdout}{current.stderr}")
    admin, token = first.banner("GITO_ADMIN_TOKEN"), first.banner("GITO_TOKEN")
    api = f"http://127.0.0.1:{ports[0]}"
    check("banner: the tenant token lists the tenant's devices (200)", http_status(f"{api}/tenants/{TENANT}/devices", token) == 200, str(token))
    check("banner: the admin token lists tenants (200)", http_status(f"{api}/tenants", admin) == 200, str(admin))
    count = next((int(m.group(1)) for line in first.lines if (m := re.match(r"Devices discovered so far: (\d+)", line))), 0)
    check(f"banner: counts the devices past the first ({count} of the simulator's 30)", 1 < count <= 30, first.output[-300:])
    logs = os.path.join(STATE, "logs")
    check("logs: api, bridge, simulator, broker and external .log under the state directory",
          all(os.path.getsize(os.path.join(logs, f"{n}.log")) > 0 for n in ("api", "bridge", "broker", "external")) and os.path.exists(os.path.join(logs, "simulator.log")),
          str(os.listdir(logs)))
    modes = {n: oct(os.stat(os.path.join(STATE, n)).st_mode & 0o777) for n in ("admin-token", "bridge-token")}
    check(f"tokens kept with mode 600 ({modes})", set(modes.values()) == {"0o600"})
    kids = descendants(first.process.pid)

    # 2. A second instance while the first runs: fails fast, says why and how to stop the first.
    second = Run(ports)
    code = second.finish(60)
    took = time.time() - second.started
    check(f"second instance: exits non-zero ({code}) in {took:.1f} s, well before the first's start ({first_took:.1f} s)",
          code not in (0, None) and took < min(10, max(2, first_took / 2)), second.output[-600:])
    pid = str(first.process.pid)
    check("second instance: names the busy port and the first instance's pid to kill",
          str(ports[0]) in second.output and f"kill {pid}" in second.output and "run-local.sh" in second.output, second.output[-600:])
    check("second instance: one line, nothing started", len(second.lines) == 1, second.output[-600:])
    check("first instance: its token still works, its log was not overwritten",
          http_status(f"{api}/tenants/{TENANT}/devices", token) == 200 and "gito-api listening" in open(os.path.join(logs, "api.log")).read())
    elsewhere = Run([free_port(), free_port(), free_port()])
    code = elsewhere.finish(60)
    check("second instance on other ports but the same state directory: refused, naming the first's pid",
          code not in (0, None) and f"kill {pid}" in elsewhere.output and "GITO_RUN_LOCAL_DIR" in elsewhere.output, elsewhere.output[-600:])

    # 3. Ctrl-C stops everything within 2 s.
    stopped_cleanly("Ctrl-C (SIGINT)", first, signal.SIGINT, kids)

    # 6. A second run reuses the tokens: one bridge token in the database. SIGTERM stops it.
    again = Run(ports)
    if started("second run", again) is not None:
        check("second run: the same bridge and admin tokens", (again.banner("GITO_TOKEN"), again.banner("GITO_ADMIN_TOKEN")) == (token, admin))
        check("second run: entrypoint.sh found the bridge token registered", "token bridge for tenant" in again.output and "exists" in again.output, again.output[-1500:])
        n = bridge_tokens()
        check(f"after two runs: exactly one token named bridge for the tenant (psql {DB}: {n})", n == 1)
        check("second run: the saved token works", http_status(f"{api}/tenants/{TENANT}/devices", token) == 200)
        stopped_cleanly("SIGTERM", again, signal.SIGTERM, descendants(again.process.pid))

    # 4. A port held by something unrelated.
    for i, role in enumerate(("API", "local broker", "external broker")):
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may be in TIME_WAIT
            squatter.bind(("127.0.0.1", ports[i]))
            squatter.listen()
            busy = Run(ports)
            code = busy.finish(60)
            took = time.time() - busy.started
        check(f"busy {role} port (a Python listener): exits non-zero ({code}) in {took:.1f} s",
              code not in (0, None) and took < 10, busy.output[-600:])
        check(f"busy {role} port: the message names the port and what listens there",
              f"port {ports[i]}" in busy.output and "python" in busy.output and "run-local.sh (pid" not in busy.output, busy.output[-600:])
        check(f"busy {role} port: nothing left running", not marked_processes(), "\n".join(marked_processes()))

    # 5. A crash at start-up: gito-api refuses a setting from the environment.
    crash = Run(ports, GITO_MAX_BODY_BYTES="notanumber")
    code = crash.finish(START_DEADLINE)
    api_log = os.path.join(logs, "api.log")
    check(f"crash: exits non-zero ({code})", code not in (0, None), crash.output[-600:])
    check("crash: shows the tail of the API's log, with the error, and its path",
          "last 20 lines of " + api_log in crash.output and "notanumber" in crash.output and f"its log: {api_log}" in crash.output, crash.output[-1500:])
    check("crash: the log is kept", os.path.exists(api_log) and "notanumber" in open(api_log).read())
    check("crash: nothing left running, ports free", not marked_processes() and all(port_free(p) for p in ports), "\n".join(marked_processes()))

    # --fresh: a new database and new tokens.
    fresh = Run(ports, "--fresh")
    if started("--fresh", fresh) is not None:
        new = fresh.banner("GITO_TOKEN")
        check("--fresh: a new bridge token and admin token", new != token and fresh.banner("GITO_ADMIN_TOKEN") != admin and new is not None)
        check("--fresh: the old token is gone (401), the new one works",
              http_status(f"{api}/tenants/{TENANT}/devices", token) == 401 and http_status(f"{api}/tenants/{TENANT}/devices", new) == 200)
        check("--fresh: one bridge token", bridge_tokens() == 1)

        # Something it started dies while it runs: it says what, shows the log, stops the rest.
        bridge = [pid for pid in descendants(fresh.process.pid) if open(f"/proc/{pid}/cmdline", "rb").read() == b"gito-bridge\0"]
        for pid in bridge:
            os.kill(pid, signal.SIGKILL)
        code = fresh.finish(10)
        check(f"gito-bridge killed while running: the script exits non-zero ({code})", bool(bridge) and code not in (0, None), fresh.output[-600:])
        check("gito-bridge killed: it says so and shows the bridge's log",
              "gito-bridge stopped" in fresh.output and "last 20 lines of " + os.path.join(logs, "bridge.log") in fresh.output, fresh.output[-800:])
        check("gito-bridge killed: nothing left running, ports free", not marked_processes() and all(port_free(p) for p in ports), "\n".join(marked_processes()))


if __name__ == "__main__":
    began = time.time()
    try:
        main()
    except Exception as error:
        check("the test itself", False, repr(error))
    finally:
        for run in runs:
            if run.process.poll() is None:
                run.process.send_signal(signal.SIGTERM)
                if run.finish(10) is None:
                    os.killpg(run.process.pid, signal.SIGKILL)
        if checks["failed"]:
            for run in runs:
                print(f"--- run-local.sh {' '.join(run.process.args[2:])} (last lines)\n" + "\n".join(run.lines[-25:]))
            logs = os.path.join(STATE, "logs")
            for log in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
                print(f"--- {log} (last lines)\n" + "".join(open(os.path.join(logs, log), errors="replace").readlines()[-15:]))
        else:
            shutil.rmtree(STATE, ignore_errors=True)
        subprocess.run(["psql", PG, "-qc", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"], capture_output=True)
    print(f"run-local test took {time.time() - began:.0f} s")
    print(f"run-local: {checks['passed']} passed, {checks['failed']} failed")
    sys.exit(1 if checks["failed"] else 0)
