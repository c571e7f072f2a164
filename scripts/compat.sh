#!/usr/bin/env bash
# Compatibility suite: the official Python and Node.js Pub/Sub clients against converge and/or
# the official Pub/Sub emulator. See docs/compatibility.md.
#
#   scripts/compat.sh [converge|emulator|both]     (default: both)
#
# Installs the clients (compat/.venv, compat/node/node_modules), builds converge (release),
# starts each target on a free port, runs both suites against it, stops it, and prints a
# summary per target and language. Results: compat/results/ (JUnit XML, logs, summary.json).
#
# Exit status: non-zero only if a scenario fails against converge without being listed in
# compat/expected-failures.txt, or a listed one passes. Emulator failures are only reported.
#
# Environment: COMPAT_PARALLEL=0 runs the two languages one after the other (default: together);
# COMPAT_SKIP_BUILD=1 uses the existing target/release/converge; CONVERGE_BIN=path uses that
# binary instead (no build); COMPAT_EMULATOR overrides the
# emulator launcher's path; COMPAT_STORE=postgres runs converge on the PostgreSQL store (a fresh
# schema in COMPAT_PG_URL, default postgres://postgres@127.0.0.1:5432/test, dropped afterwards)
# instead of the embedded one in memory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=${1:-both}
case $MODE in
  converge) TARGETS=(converge) ;;
  emulator) TARGETS=(emulator) ;;
  both) TARGETS=(converge emulator) ;;
  *) echo "usage: $0 [converge|emulator|both]" >&2; exit 2 ;;
esac

COMPAT=$ROOT/compat
RESULTS=$COMPAT/results
VENV=$COMPAT/.venv
EMULATOR=${COMPAT_EMULATOR:-/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator}
CONVERGE=${CONVERGE_BIN:-$ROOT/target/release/converge}
PARALLEL=${COMPAT_PARALLEL:-1}

log() { printf 'compat: %s\n' "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.1f\n", a - b }'; }

rm -rf "$RESULTS"
mkdir -p "$RESULTS"

# --- install -----------------------------------------------------------------------------------
# Reinstall only when the pinned requirements or lock file change (a stamp holds their hash).
install_python() {
  local stamp=$VENV/.requirements.sha256 want
  want=$(sha256sum "$COMPAT/python/requirements.txt" | cut -d' ' -f1)
  if [[ -x $VENV/bin/pytest && -f $stamp && $(cat "$stamp") == "$want" ]]; then return; fi
  log "installing the Python client into compat/.venv"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$COMPAT/python/requirements.txt"
  echo "$want" >"$stamp"
}

install_node() {
  local stamp=$COMPAT/node/node_modules/.lock.sha256 want
  want=$(sha256sum "$COMPAT/node/package-lock.json" | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then return; fi
  log "installing the Node.js client (npm ci in compat/node)"
  (cd "$COMPAT/node" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
}

install_python
install_node

if [[ " ${TARGETS[*]} " == *" converge "* && ${COMPAT_SKIP_BUILD:-0} != 1 && -z ${CONVERGE_BIN:-} ]]; then
  log "building converge (release)"
  cargo build --release --quiet -p converge-cli
fi

# --- targets -----------------------------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

STORE=${COMPAT_STORE:-memory}
PG_URL=${COMPAT_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
PG_SCHEMA=compat_$$_$RANDOM
case $STORE in
  memory) STORE_ARGS=(--memory) ;;
  postgres) STORE_ARGS=(--store "$PG_URL?schema=$PG_SCHEMA") ;;
  *) echo "compat: COMPAT_STORE must be memory or postgres" >&2; exit 2 ;;
esac
drop_schema() {
  if [[ $STORE == postgres ]]; then
    psql -q "$PG_URL" -c "DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true
  fi
}

TARGET_PID=""
stop_target() {
  if [[ -n $TARGET_PID ]] && kill -0 "$TARGET_PID" 2>/dev/null; then
    kill -TERM "$TARGET_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$TARGET_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$TARGET_PID" 2>/dev/null || true
    wait "$TARGET_PID" 2>/dev/null || true
  fi
  TARGET_PID=""
}
trap 'stop_target; drop_schema' EXIT

# Starts a target; sets HOST (for PUBSUB_EMULATOR_HOST) and TARGET_PID. Fails after 60 s.
start_target() {
  local target=$1 port
  port=$(free_port)
  case $target in
    converge)
      log "converge store: $STORE"
      "$CONVERGE" serve "${STORE_ARGS[@]}" --listen "127.0.0.1:$port" --log-format json \
        >"$RESULTS/converge.log" 2>&1 &
      TARGET_PID=$!
      HOST=127.0.0.1:$port
      ready() { curl -fs -o /dev/null "http://$HOST/readyz"; }
      ;;
    emulator)
      # Its REST surface only works with --host=localhost; the clients here use gRPC either way.
      "$EMULATOR" --host=localhost --port="$port" >"$RESULTS/emulator.log" 2>&1 &
      TARGET_PID=$!
      HOST=localhost:$port
      ready() { grep -q "Server started" "$RESULTS/emulator.log" && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
      ;;
  esac
  for _ in $(seq 1 300); do
    if ready; then log "$target ready on $HOST (pid $TARGET_PID)"; return 0; fi
    kill -0 "$TARGET_PID" 2>/dev/null || { echo "compat: $target exited; log:" >&2; tail -20 "$RESULTS/$target.log" >&2; return 1; }
    sleep 0.2
  done
  echo "compat: $target not ready after 60 s" >&2
  return 1
}

# --- suites ------------------------------------------------------------------------------------
# Each suite writes <target>-<language>.{xml,log,time}; its own exit status is not the verdict.
run_python() {
  local target=$1 start
  start=$(now)
  (cd "$COMPAT/python" && PUBSUB_EMULATOR_HOST=$HOST PUBSUB_PROJECT_ID=compat-$target \
    "$VENV/bin/pytest" -q -p no:cacheprovider --junitxml="$RESULTS/$target-python.xml" \
    -o junit_suite_name="$target-python" .) >"$RESULTS/$target-python.log" 2>&1 || true
  elapsed "$start" >"$RESULTS/$target-python.time"
}

run_node() {
  local target=$1 start
  start=$(now)
  (cd "$COMPAT/node" && PUBSUB_EMULATOR_HOST=$HOST PUBSUB_PROJECT_ID=compat-$target \
    METADATA_SERVER_DETECTION=none \
    node --test --test-concurrency=1 \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=junit --test-reporter-destination="$RESULTS/$target-node.xml" test/) \
    >"$RESULTS/$target-node.log" 2>&1 || true
  elapsed "$start" >"$RESULTS/$target-node.time"
}

for target in "${TARGETS[@]}"; do
  if [[ $target == emulator ]]; then
    # The emulator is only the comparison: if it is missing or will not start, report and go on.
    if [[ ! -x $EMULATOR ]] || ! command -v java >/dev/null; then
      log "emulator not available ($EMULATOR, java); skipping it"
      continue
    fi
    if ! start_target emulator; then
      log "emulator did not start; skipping it"
      stop_target
      continue
    fi
  else
    start_target "$target"
  fi
  log "running the Python and Node.js suites against $target"
  if [[ $PARALLEL == 1 ]]; then
    run_python "$target" &
    py_pid=$!
    run_node "$target" &
    node_pid=$!
    wait "$py_pid" "$node_pid"
  else
    run_python "$target"
    run_node "$target"
  fi
  stop_target
done

status=0
python3 "$COMPAT/tools/summarize.py" "$RESULTS" "$COMPAT/expected-failures.txt" || status=$?
exit "$status"
