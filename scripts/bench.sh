#!/usr/bin/env bash
# Runs every benchmark at full size and writes bench/RESULTS.md (see bench/README.md).
# Installs what it needs (PostgreSQL, Mosquitto, wrk; Alembic into a venv under target/).
# Takes about 15 minutes on 2 cores; run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_postgres
ensure_mosquitto
ensure_wrk
export GITO_TEST_DATABASE_URL="$PG_URL"
step "build (release)"
cargo build --release --locked --workspace
step "benchmarks"
./target/release/gito-bench all --out bench/RESULTS.md "$@"
