#!/usr/bin/env bash
# Runs the mail example (examples/mail) against a `converge serve` process and the local
# PostgreSQL, with failures injected, and prints its counts. Fails unless every user ended with
# exactly one mail and one recorded status.
# Usage: scripts/mail-demo.sh [mail-demo args, e.g. --users 500 --fail-before 0.4]
# Env: CONVERGE_BIN (default: build target/debug/converge), DATABASE_URL.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [[ -z ${CONVERGE_BIN:-} ]]; then
  cargo build --quiet --locked -p converge-cli
  CONVERGE_BIN=$target_dir/debug/converge
fi
cargo build --quiet --locked -p converge-example-mail --bin mail-demo

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
data=$(mktemp -d)
log=$data/converge.log
start_broker() {
  "$CONVERGE_BIN" serve --listen "127.0.0.1:$port" --data-dir "$data/store" >>"$log" 2>&1 &
  echo $! >"$data/pid"
}
cleanup() {
  local rc=$?
  if [[ -n ${chaos:-} ]]; then kill "$chaos" 2>/dev/null || true; fi
  kill -TERM "$(cat "$data/pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$data"
  exit "$rc"
}
trap cleanup EXIT
start_broker
for _ in $(seq 1 150); do
  curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break
  kill -0 "$(cat "$data/pid")" 2>/dev/null || { echo "converge exited:" >&2; tail -20 "$log" >&2; exit 1; }
  sleep 0.2
done

# Mid-run, the broker is killed with SIGKILL and started again on the same port and data: what it
# acknowledged must survive, and the SDK must reconnect on its own.
(
  sleep "${BROKER_CRASH_AFTER:-2}"
  kill -KILL "$(cat "$data/pid")"
  echo "mail-demo.sh: broker killed with SIGKILL; restarting it" >&2
  sleep 0.5
  start_broker
) &
chaos=$!

"$target_dir/debug/mail-demo" --endpoint "127.0.0.1:$port" \
  --database-url "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}" "$@"
