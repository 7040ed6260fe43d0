#!/usr/bin/env python3
"""The README and docs/*.md, command by command: every ```bash block that can run here, runs.

Extracts every fenced ```bash block of README.md and docs/*.md (other fences, ```sql, ```toml
and plain ``` output samples, are not commands) and, in document order (README.md first, then
docs/ by name), runs it or says why not, one line per block:

    walkthrough: README.md:96 ok 0.4s
    walkthrough: README.md:23 skip (Docker: ...)
    walkthrough: docs/MIGRATIONS.md:90 FAIL (exit 1, 2.3s)   followed by the block's last lines
    walkthrough: 9 passed, 0 failed, 19 skipped (total 95.2s)

scripts/test.sh adds the last line to its totals, so a failed block fails CI.

What is not run, and why, is decided by these rules, in this order (the reason is printed):
  1. A marker on the line(s) before the fence, invisible when rendered, visible in the source:
         <!-- walkthrough: skip (why it cannot or must not run here) -->
  2. A block that calls `docker`: it acts on a compose deployment, never run here (there is no
     Docker on the CI machine; scripts/compose_smoke.py checks the deployment without it). What
     can be checked without Docker is: the services (`docker compose up/stop/restart/logs/run`)
     and containers (`docker exec/logs`) it names must exist in docker-compose.yml, or it fails.
  3. A transcript (its first line starts with "$ "): a prompt with its output, not a script.
  4. A few blocks of docs other sessions were editing at the time, listed in LISTED_SKIPS below
     (each with its reason; move them to markers in their files).
Everything else runs, and fails the walkthrough when it does not run as written.

How a block runs:
  - Against a real local gito: scripts/run-local.sh, started as the first block that runs it
    (README's `scripts/run-local.sh`), with a state directory, a database and ports of its own
    (GITO_RUN_LOCAL_DIR=target/run-local-walkthrough, GITO_RUN_LOCAL_DB=gito_walkthrough, three
    free ports), both wiped first, as on a fresh clone. A block that is only `scripts/run-local.sh
    ARGS` (e.g. `--fresh`) stops that instance with Ctrl-C (SIGINT) and starts the block's command
    in its place; its time is the time to the banner. The instance is stopped with SIGINT at the end.
  - In `bash`, working directory the repository, after the `export` lines of run-local.sh's banner
    pasted as printed (DATABASE_URL, PATH with target/release, GITO_ADMIN_TOKEN, GITO_TOKEN: what
    the README tells the reader to paste), then `set -euo pipefail`, then the block. Each block in
    a fresh shell: nothing carries over from one block to the next.
  - Substitution: `localhost:8000` and `127.0.0.1:8000` (run-local.sh's default API address) are
    rewritten to the instance's API port. Nothing else is rewritten; a `<placeholder>` left in a
    block is a failure (fill it in the docs, or mark the block).
  - A block that changes a schema or writes migration files (`migrate down`, `migrate stamp`,
    `migrate new`) gets DATABASE_URL of a scratch database (created and migrated to head for it,
    dropped after it) and GITO_MIGRATIONS_DIR of a scratch copy of migrations/. migrations/ and
    .sqlx/ are compared before and after every block: a change fails the block (new files in
    migrations/ are removed again). Databases a block creates (names that appear in blocks and did
    not exist before the walkthrough) are dropped at the end.
  - Timeout: 120 s a block; 1200 s for a block that calls cargo (it may build first).

Usage: scripts/docs_walkthrough.py [--list] [--verbose] [--only TEXT]...
  --list      classify the blocks, run nothing (no instance started)
  --verbose   print every block's output too
  --only      run only blocks whose "FILE:LINE" contains TEXT (run-local.sh blocks always run)
Every block's script and output also go to target/walkthrough/log.txt.
Needs what scripts/run-local.sh needs (it builds the release binaries when they are missing).
"""
import argparse
import glob
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = os.path.join(ROOT, "target", "run-local-walkthrough")
DB = "gito_walkthrough"
SCRATCH_DB = "gito_walkthrough_scratch"
LOG_DIR = os.path.join(ROOT, "target", "walkthrough")
START_DEADLINE = 1200  # run-local.sh builds the release binaries first when the sources changed
TIMEOUT, CARGO_TIMEOUT = 120, 1200
MARKER = re.compile(r"^\s*<!--\s*walkthrough:\s*skip\s*\((.*)\)\s*-->\s*$")
ANY_MARKER = re.compile(r"^\s*<!--\s*walkthrough:")
FENCE = re.compile(r"^(\s*)```\s*([A-Za-z0-9_+-]*)\s*$")
DOCKER = re.compile(r"(^|[\s;|&(`])docker\s", re.M)
SCRATCH = re.compile(r"\bmigrate\s+(down|stamp|new)\b")
PLACEHOLDER = re.compile(r"(?<![<\w])<[A-Za-z_][A-Za-z0-9_-]*>(?!>)")
DEFAULT_API = re.compile(r"\b(localhost|127\.0\.0\.1):8000\b")

# (file, the block's first line): reason. For docs that other sessions were editing when this
# script was written; move each to a marker in its file.
LISTED_SKIPS = {
    ("docs/BRIDGE.md", "GITO_EXTERNAL_MQTT_URL='mqtt://bridge:secret@plant-broker:1883?client_id=plant-7' \\"):
        "illustrative: a plant broker and placeholders (0192f0c4-..., gito_...); run-local.sh runs gito-bridge for real",
}


class Block:
    def __init__(self, path, line, indent, text, marker):
        self.path, self.line, self.text, self.marker = path, line, text, marker
        self.indent = indent

    @property
    def where(self):
        return f"{self.path}:{self.line}"

    @property
    def first_line(self):
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")

    def run_local_args(self):
        """The arguments when the block is only `scripts/run-local.sh ARGS` (a comment allowed)."""
        lines = [line for line in self.text.splitlines() if line.strip() and not line.strip().startswith("#")]
        if len(lines) != 1:
            return None
        try:
            words = shlex.split(lines[0], comments=True)
        except ValueError:
            return None
        return words[1:] if words and words[0] in ("scripts/run-local.sh", "./scripts/run-local.sh") else None

    def skip_reason(self):
        if self.marker is not None:
            return self.marker
        if DOCKER.search(self.text):
            services, containers = docker_names(self.text)
            known_services, known_containers = compose_names()
            unknown = sorted(services - known_services) + sorted(containers - known_containers)
            if unknown:
                return None  # run_block fails it, naming them
            return ("Docker: acts on a compose deployment, never run here; its service and container names match "
                    "docker-compose.yml (scripts/compose_smoke.py checks the deployment without Docker)")
        if self.first_line.startswith("$ "):
            return "a transcript (a prompt and its output), not a script"
        return LISTED_SKIPS.get((self.path, self.first_line))


def compose_names():
    import yaml  # PyYAML: scripts/test.sh installs it
    services = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))["services"]
    return set(services), {s.get("container_name") for s in services.values()} - {None}


def docker_names(text):
    """(services, containers) that the docker commands of a block name."""
    services, containers = set(), set()
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        for i, word in enumerate(words):
            if word != "docker" or i + 1 >= len(words):
                continue
            rest = []
            for w in words[i + 1:]:
                if w in ("|", "&&", ";", "||") or w.startswith((">", "<", "2>")):
                    break
                rest.append(w)
            if not rest:
                continue
            if rest[0] == "compose":
                args, j = rest[1:], 0
                while j < len(args) and args[j].startswith("-"):
                    j += 2 if args[j] in ("--profile", "-f", "--file", "-p", "--project-name") else 1
                sub, args = (args[j], args[j + 1:]) if j < len(args) else ("", [])
                names = [a for a in args if not a.startswith("-")]
                if sub in ("up", "stop", "restart", "logs", "start"):
                    services.update(names)
                elif sub in ("run", "exec") and names:
                    services.add(names[0])
            elif rest[0] in ("exec", "logs"):
                names = [a for a in rest[1:] if not a.startswith("-")]
                if names:
                    containers.add(names[0])
    return services, containers


def blocks_of(path):
    """The ```bash blocks of one markdown file, each with the marker before its fence."""
    rel = os.path.relpath(path, ROOT)
    lines = open(path, encoding="utf-8").read().split("\n")
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang, start = match.group(1), match.group(2).lower(), i
        end = start + 1
        while end < len(lines) and not re.match(r"^\s*```\s*$", lines[end]):
            end += 1
        if lang in ("bash", "sh", "shell"):
            body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[start + 1:end]]
            marker, j = None, start - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            if j >= 0 and ANY_MARKER.match(lines[j]):
                m = MARKER.match(lines[j])
                marker = m.group(1) if m else f"unreadable marker {lines[j].strip()!r}: write <!-- walkthrough: skip (reason) -->"
            found.append(Block(rel, start + 1, indent, "\n".join(body) + "\n", marker))
        i = end + 1
    return found


def all_blocks():
    files = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [block for path in files for block in blocks_of(path)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_url(env):
    """The PostgreSQL server run-local.sh uses (scripts/lib.sh's PG_URL), without a database."""
    return env.get("DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]


def psql(server, sql, db="postgres"):
    return subprocess.run(["psql", f"{server}/{db}", "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def databases(server):
    return set(psql(server, "SELECT datname FROM pg_database").split())


def snapshot(*dirs):
    """{path: sha256} of every file under dirs (relative to the repository)."""
    files = {}
    for d in dirs:
        for base, _, names in os.walk(os.path.join(ROOT, d)):
            for name in names:
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    files[os.path.relpath(path, ROOT)] = hashlib.sha256(f.read()).hexdigest()
    return files


def elapsed(seconds):
    return f"{seconds:.1f}s"


class Instance:
    """One scripts/run-local.sh, its output collected as it comes."""

    def __init__(self, args, env):
        self.args, self.lines, self.started = args, [], time.time()
        # SIGINT as at a terminal: not ignored even when this script runs in the background.
        self.process = subprocess.Popen(["bash", "scripts/run-local.sh", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self):
        """True once the banner is complete, False when the script ended or the deadline passed."""
        end = self.started + START_DEADLINE
        while time.time() < end:
            if any(line.startswith("Devices discovered so far") for line in self.lines):
                return True
            if self.process.poll() is not None:
                self.reader.join(5)
                return False
            time.sleep(0.1)
        return False

    def exports(self):
        """The banner's export lines, as a reader pastes them."""
        return [line[line.index("export "):] for line in self.lines if line.lstrip().startswith(("environment", "tokens", "export "))
                and "export " in line]

    def stop(self):
        """Ctrl-C; (exit code, seconds). SIGKILL to its process group after 10 s."""
        if self.process.poll() is not None:
            return self.process.returncode, 0.0
        sent = time.time()
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait()
        self.reader.join(5)
        return code, time.time() - sent


class Walkthrough:
    def __init__(self, options):
        self.options = options
        self.counts = {"passed": 0, "failed": 0, "skipped": 0}
        self.instance = None
        self.ports = [free_port(), free_port(), free_port()]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GITO_") and k != "RUST_LOG"}
        self.instance_env = dict(self.env, GITO_API_PORT=str(self.ports[0]), GITO_LOCAL_MQTT_PORT=str(self.ports[1]),
                                 GITO_EXTERNAL_MQTT_PORT=str(self.ports[2]), GITO_RUN_LOCAL_DIR=STATE, GITO_RUN_LOCAL_DB=DB)
        # Blocks run with the banner's exports, not with this process's database.
        self.env.pop("DATABASE_URL", None)
        self.server = server_url(os.environ)
        os.makedirs(LOG_DIR, exist_ok=True)
        self.log = open(os.path.join(LOG_DIR, "log.txt"), "w")

    def report(self, block, verdict, detail=""):
        key = "passed" if verdict.startswith("ok") else "skipped" if verdict.startswith("skip") else "failed"
        self.counts[key] += 1
        print(f"walkthrough: {block.where} {verdict}", flush=True)
        if detail:
            print("\n".join("    | " + line for line in detail.rstrip("\n").splitlines()), flush=True)
        self.log.write(f"=== {block.where} {verdict}\n{block.text}--- output\n{detail}\n")
        self.log.flush()

    # --- the instance -------------------------------------------------------------------------

    def start_instance(self, block, args):
        began = time.time()
        if self.instance is None:
            shutil.rmtree(STATE, ignore_errors=True)
            psql(self.server, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        else:
            code, took = self.instance.stop()
            if code != 0:
                self.report(block, f"FAIL (stopping the running instance with Ctrl-C: exit {code})", "\n".join(self.instance.lines[-15:]))
                self.instance = None
                return
        self.instance = Instance(args, self.instance_env)
        if self.instance.wait_ready():
            line = next((l for l in self.instance.lines if l.startswith("gito is running")), "")
            self.report(block, f"ok {elapsed(time.time() - began)} ({' '.join(['run-local.sh', *args])}: {line.strip()} "
                               f"on :{self.ports[0]}; kept running for the blocks that follow)".replace("  ", " "))
            self.banner_commands()
        else:
            self.report(block, f"FAIL ({' '.join(['run-local.sh', *args])} did not reach its banner, exit {self.instance.process.poll()}, "
                               f"{elapsed(time.time() - began)})", "\n".join(self.instance.lines[-25:]))
            self.instance.stop()
            self.instance = None

    def banner_commands(self):
        """What the README says of the banner: paste its export lines, then `gito-api migrate current`
        prints the head and its curl commands answer. Reported as a block at that README line."""
        readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().split("\n")
        line = next((i + 1 for i, l in enumerate(readme) if "Paste the `export` lines" in l), 0)
        curls = [l.strip().split(None, 1)[1] for l in self.instance.lines if re.match(r"^\s+\S+\s+curl ", l)]
        head = sorted(f for f in os.listdir(os.path.join(ROOT, "migrations")) if f.endswith(".up.sql"))[-1][:-len(".up.sql")]
        text = f"gito-api migrate current | tee /dev/stderr | grep -qx '{head} (head)'\n"
        text += "".join(f"{c} | tee /dev/stderr | grep -q '^{{\"items\":'\n" for c in curls)
        self.run_block(Block("README.md", line, "", text, None), note=f" (the banner's export lines, then gito-api migrate current "
                                                                       f"and its {len(curls)} curl commands)")

    # --- one block ----------------------------------------------------------------------------

    def scratch_database(self):
        psql(self.server, f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)')
        psql(self.server, f'CREATE DATABASE "{SCRATCH_DB}"')
        url = self.banner_env().get("DATABASE_URL", f"{self.server}/{DB}").rsplit("/", 1)[0] + "/" + SCRATCH_DB
        subprocess.run(["gito-api", "migrate", "up"], env=dict(self.banner_env(), DATABASE_URL=url), check=True,
                       capture_output=True, text=True, timeout=60)
        return url

    def banner_env(self):
        """The environment after pasting the banner's export lines."""
        out = subprocess.run(["bash", "-c", "\n".join(self.instance.exports()) + "\nenv -0"], env=self.env, cwd=ROOT,
                             capture_output=True, check=True, timeout=10).stdout
        return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)

    def run_block(self, block, note=""):
        if self.instance is None:
            self.report(block, "FAIL (no running gito: scripts/run-local.sh did not start)")
            return
        if DOCKER.search(block.text):
            services, containers = docker_names(block.text)
            known_services, known_containers = compose_names()
            unknown = sorted(services - known_services) + sorted(containers - known_containers)
            self.report(block, f"FAIL (names no service or container of docker-compose.yml: {', '.join(unknown)})")
            return
        text = DEFAULT_API.sub(lambda m: f"{m.group(1)}:{self.ports[0]}", block.text)
        left = sorted(set(PLACEHOLDER.findall("\n".join(line.split(" #")[0] for line in text.splitlines()))))
        if left:
            self.report(block, f"FAIL (placeholder {', '.join(left)}: fill it in the docs, or mark the block skip with a reason)")
            return
        env = dict(self.env)
        scratch_dir = None
        prelude = "\n".join(self.instance.exports())
        if SCRATCH.search(text):
            scratch_dir = tempfile.mkdtemp(prefix="gito-walkthrough-")
            shutil.copytree(os.path.join(ROOT, "migrations"), os.path.join(scratch_dir, "migrations"))
            prelude += (f"\nexport DATABASE_URL={shlex.quote(self.scratch_database())}"
                        f" GITO_MIGRATIONS_DIR={shlex.quote(os.path.join(scratch_dir, 'migrations'))}")
        script = f"{prelude}\nset -euo pipefail\n{text}"
        timeout = CARGO_TIMEOUT if re.search(r"\bcargo\s", text) else TIMEOUT
        before = snapshot("migrations", ".sqlx")
        began = time.time()
        process = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout)
            code = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            code = f"timeout after {timeout} s"
        took = time.time() - began
        output = output.decode(errors="replace")
        after = snapshot("migrations", ".sqlx")
        if scratch_dir:
            shutil.rmtree(scratch_dir, ignore_errors=True)
            psql(self.server, f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)')
        changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
        for path in changed:
            if path not in before and path.startswith("migrations/"):
                os.remove(os.path.join(ROOT, path))
        tail = "\n".join(output.rstrip("\n").splitlines()[-15:])
        if code != 0:
            self.report(block, f"FAIL (exit {code}, {elapsed(took)})", tail)
        elif changed:
            self.report(block, f"FAIL (changed the repository: {', '.join(changed)}; new migration files removed, {elapsed(took)})", tail)
        else:
            self.report(block, f"ok {elapsed(took)}{note}", output if self.options.verbose else "")
            if not self.options.verbose:
                self.log.write(output + "\n")

    # --- all of it ----------------------------------------------------------------------------

    def run(self):
        blocks = all_blocks()
        existing = databases(self.server)
        mentioned = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", " ".join(b.text for b in blocks)))
        try:
            for block in blocks:
                reason = block.skip_reason()
                args = block.run_local_args()
                if reason is not None:
                    self.report(block, f"skip ({reason})")
                elif args is not None:
                    self.start_instance(block, args)
                elif not any(o in block.where for o in self.options.only or [""]):
                    self.report(block, "skip (not selected by --only)")
                else:
                    self.run_block(block)
        finally:
            if self.instance is not None:
                code, took = self.instance.stop()
                ok = code == 0 and took < 2
                print(f"walkthrough: stopped the instance with Ctrl-C (SIGINT) in {took:.2f}s, exit {code}", flush=True)
                if not ok:
                    self.counts["failed"] += 1
                    print(f"walkthrough: run-local.sh FAIL (Ctrl-C must stop it within 2 s with exit 0)", flush=True)
            for db in sorted((databases(self.server) - existing) & (mentioned | {SCRATCH_DB})):
                psql(self.server, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                print(f"walkthrough: dropped the database {db} that a block created", flush=True)
            psql(self.server, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
            if not self.counts["failed"]:
                shutil.rmtree(STATE, ignore_errors=True)
            self.log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument("--only", action="append")
    options = parser.parse_args()
    if options.list:
        for block in all_blocks():
            reason, args = block.skip_reason(), block.run_local_args()
            what = f"skip ({reason})" if reason is not None else f"{' '.join(['run-local.sh', *args])}".strip() if args is not None else "run"
            print(f"{block.where} {what}: {block.first_line[:70]}")
        return 0
    began = time.time()
    walk = Walkthrough(options)
    try:
        walk.run()
    except Exception as error:  # the walkthrough itself broke: a failure, said as such
        walk.counts["failed"] += 1
        print(f"walkthrough: FAIL (the walkthrough itself: {error!r})", flush=True)
    c = walk.counts
    print(f"walkthrough: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped (total {elapsed(time.time() - began)})", flush=True)
    return 1 if c["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
