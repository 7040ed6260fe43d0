#!/usr/bin/env bash
# The whole check, exactly as CI runs it (.ci/run calls this script):
#   1. make sure PostgreSQL (and Mosquitto, for the MQTT tests) are installed and running,
#      installing them with apt-get on Debian/Ubuntu when missing;
#   2. cargo fmt --check, clippy with -D warnings, and the sqlx offline-data check;
#   3. the whole test suite, ending with one "N passed, N failed" line.
#
# Also checks the deployment files (compose schema, hadolint, shellcheck, promtool on
# deploy/prometheus), runs the compose
# smoke test (scripts/compose_smoke.py), the run-local.sh test (scripts/run_local_test.py, which
# builds the release binaries), the README and docs/ command by command (scripts/docs_walkthrough.py),
# the console in headless Chromium (scripts/console-test, playwright-core from npm, Debian's
# chromium) and the hostile-input run (scripts/schemathesis.sh); the Python tools come from PyPI.
#
# DATABASE_URL, when set, names the PostgreSQL server the tests use (they create one database
# per test on it); otherwise the local server on 127.0.0.1:5432 is used, and set up if needed.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

SQLX_CLI_VERSION=0.9.0

ensure_postgres
ensure_mosquitto
ensure_python_tools
ensure_promtool

step "deployment files: compose schema, hadolint, shellcheck, promtool"
check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
hadolint Dockerfile
shellcheck -x scripts/*.sh entrypoint.sh mosquitto/init.sh .ci/run
# --syntax-only: the admin token file the config names exists only inside the container.
promtool check config --syntax-only deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
python3 -c 'import json, sys; [json.load(open(f)) for f in sys.argv[1:]]' deploy/grafana/dashboards/*.json

step "cargo fmt --check"
cargo fmt --all -- --check

export SQLX_OFFLINE=true
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "sqlx offline query data (.sqlx/) matches the queries and the schema"
if ! cargo sqlx --version 2>/dev/null | grep -q " ${SQLX_CLI_VERSION}$"; then
  cargo install sqlx-cli --version "${SQLX_CLI_VERSION}" --locked --no-default-features --features postgres,rustls
fi
check_db="$(database_url gito_sqlx_check)"
psql_admin -c "DROP DATABASE IF EXISTS gito_sqlx_check WITH (FORCE)" -c "CREATE DATABASE gito_sqlx_check"
cargo build --locked -p gito-api --bin gito-api
DATABASE_URL="$check_db" ./target/debug/gito-api migrate up
DATABASE_URL="$check_db" SQLX_OFFLINE=false cargo sqlx prepare --workspace --check -- --all-targets

step "tests"
drop_test_databases
export GITO_TEST_DATABASE_URL="$PG_URL"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?

step "benchmarks, smoke sizes (they must keep running; the figures mean nothing here)"
ensure_wrk
cargo build --locked -p gito-bench
./target/debug/gito-bench all --smoke --out "$(mktemp)" >/dev/null || status=$?

step "the deployment without Docker: compose's environment, entrypoint.sh, data flowing"
python3 scripts/compose_smoke.py target/debug 2>&1 | tee -a "$log" || status=$?

step "scripts/run-local.sh from the outside: start, second instance, Ctrl-C, busy port, crash, tokens"
python3 scripts/run_local_test.py 2>&1 | tee -a "$log" || status=$?

step "README.md and docs/, command by command, against run-local.sh (scripts/docs_walkthrough.py)"
python3 scripts/docs_walkthrough.py 2>&1 | tee -a "$log" || status=$?

step "the console in headless Chromium (scripts/console-test): gito-api, gito-bridge, two brokers, MQTT in"
ensure_chromium
cargo build --locked -p gito-api -p gito-bridge --bins
if (cd scripts/console-test && npm ci --no-audit --no-fund --loglevel=error); then
  node scripts/console-test/run.mjs target/debug 2>&1 | tee -a "$log" || status=$?
else
  status=1
fi

step "hostile input: schemathesis against gito-api with the admin and a tenant token"
bash scripts/schemathesis.sh target/debug 2>&1 | tee -a "$log" || status=$?

passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
smoke_passed=$(grep -Eo '^compose-smoke: [0-9]+ passed' "$log" | grep -Eo '[0-9]+' || echo 0)
smoke_failed=$(grep -Eo '^compose-smoke: [0-9]+ passed, [0-9]+ failed' "$log" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+' || echo 1)
rl_passed=$(grep -Eo '^run-local: [0-9]+ passed' "$log" | grep -Eo '[0-9]+' || echo 0)
rl_failed=$(grep -Eo '^run-local: [0-9]+ passed, [0-9]+ failed' "$log" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+' || echo 1)
wt_passed=$(grep -Eo '^walkthrough: [0-9]+ passed' "$log" | grep -Eo '[0-9]+' || echo 0)
wt_failed=$(grep -Eo '^walkthrough: [0-9]+ passed, [0-9]+ failed' "$log" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+' || echo 1)
st_passed=$(grep -Eo '^schemathesis: [0-9]+ passed' "$log" | grep -Eo '[0-9]+' || echo 0)
st_failed=$(grep -Eo '^schemathesis: [0-9]+ passed, [0-9]+ failed' "$log" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+' || echo 1)
co_passed=$(grep -Eo '^console: [0-9]+ passed' "$log" | grep -Eo '[0-9]+' || echo 0)
co_failed=$(grep -Eo '^console: [0-9]+ passed, [0-9]+ failed' "$log" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+' || echo 1)
passed=$((passed + smoke_passed + rl_passed + wt_passed + st_passed + co_passed))
failed=$((failed + smoke_failed + rl_failed + wt_failed + st_failed + co_failed))
drop_test_databases
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
