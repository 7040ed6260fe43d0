#!/usr/bin/env bash
# Runs every benchmark at full size and writes bench/RESULTS.md (see bench/README.md).
# Installs what it needs (PostgreSQL, Mosquitto, wrk; Alembic into a venv under target/).
# Takes about 50 minutes on 2 cores, most of it loading 100 million rows for the storage bench
# (see bench/README.md), more with --million (the pipeline at 1,000,000 devices);
# run it on an otherwise idle machine. Arguments go to `gito-bench all` (--million).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_postgres
ensure_mosquitto
ensure_wrk
export GITO_TEST_DATABASE_URL="$PG_URL"
step "build (release)"
cargo build --release --locked -p gito-bench -p gito-bridge -p gito-api
step "benchmarks"
./target/release/gito-bench all --out bench/RESULTS.md "$@"
