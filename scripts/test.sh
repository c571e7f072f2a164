#!/usr/bin/env bash
# Runs every check and test of converge, installing what they need first.
# Usage: scripts/test.sh [extra nextest args]
# Needs python3 (with venv) and node/npm for the compatibility suite (compat/).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

step "formatting (cargo fmt --check)"
cargo fmt --all --check

step "lints (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (cargo nextest)"
cargo nextest run --workspace --locked --profile ci "$@"

step "the API suites again, every broker on the PostgreSQL store (CONVERGE_TEST_STORE=postgres)"
# The same tests, the same assertions: tests/common starts `converge serve --store postgres://...`
# (a fresh schema per broker) wherever it would have started `--memory`.
CONVERGE_TEST_STORE=postgres cargo nextest run -p converge-cli --locked --profile ci \
  -E 'binary(grpc_semantics) | binary(push) | binary(push_auth) | binary(rest_api) | binary(schemas_iam) | binary(snapshots_seek) | binary(streaming_pull) | binary(cli)'

step "the side-by-side benchmark, short mode (converge beside NATS, RabbitMQ, a PostgreSQL queue, the emulator)"
# About a minute, tiny windows: it proves the tool and every target still work, not the figures
# (those come from the full run recorded in BENCHMARKS.md). --strict fails on a converge step.
# --spawn: private NATS, RabbitMQ and PostgreSQL servers, as in the full run (start-up needs them).
cargo build -q --locked -p converge-bench
"$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/converge-bench" \
  --short --strict --spawn nats,rabbitmq,postgres --out target/bench-short

step "doc tests"
cargo test --workspace --doc --locked

step "the mail example against a converge process and PostgreSQL, under injected failures"
CONVERGE_BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/converge" \
  scripts/mail-demo.sh --users 300

step "compatibility suite: the official Python and Node.js clients against converge"
# The debug binary the tests just built; `scripts/compat.sh both` also runs the official emulator.
CONVERGE_BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/converge" \
  scripts/compat.sh converge

step "compatibility suite again, converge on the PostgreSQL store"
CONVERGE_BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/converge" \
  COMPAT_STORE=postgres scripts/compat.sh converge
