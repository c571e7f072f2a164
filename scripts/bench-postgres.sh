#!/usr/bin/env bash
# Publish and end-to-end throughput of converge on three stores, in one run, with one workload:
#   1. the embedded store (fsync), one node;
#   2. the PostgreSQL store, one node;
#   3. the PostgreSQL store, three nodes on one schema, publishers and subscribers spread over
#      the three.
# Two passes on each target: publishers at a fixed total rate (latency at a given load), then
# publishers as fast as the broker answers (throughput; end-to-end latency there is mostly time
# in the backlog when subscribers fall behind).
# Each target gets a fresh data directory or schema, removed afterwards; every broker started
# here is stopped on exit. The table (with the ratios PostgreSQL-1 / embedded and
# PostgreSQL-3 / PostgreSQL-1) is printed and written to bench/cluster-throughput/last-run.txt.
#
# Environment (all optional):
#   PG_URL       server to use        [postgres://postgres@127.0.0.1:5432/test]
#   PUBLISHERS   publishers           [4]
#   SUBSCRIBERS  subscribers          [3]
#   SIZE         bytes per message    [1024]
#   DURATION     measured window      [10s]
#   WARMUP       warm-up              [2s]
#   RATE         total msg/s of the fixed-rate pass; 0 skips it [1000]
#   RATE_DURATION  window of the fixed-rate pass [5s]
#   DATA_PARENT  where the embedded store's directory is made (a real disk, not tmpfs) [target/]
#   SKIP_BUILD   1: use the binaries already built
#   PROFILE      release, or debug for a quick check of the script itself [release]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
PUBLISHERS="${PUBLISHERS:-4}"
SUBSCRIBERS="${SUBSCRIBERS:-3}"
SIZE="${SIZE:-1024}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
RATE="${RATE:-1000}"
RATE_DURATION="${RATE_DURATION:-5s}"
DATA_PARENT="${DATA_PARENT:-$root/target}"
out_file="$root/bench/cluster-throughput/last-run.txt"

PROFILE="${PROFILE:-release}"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  echo "building converge and cluster-throughput ($PROFILE)..." >&2
  if [[ "$PROFILE" == release ]]; then
    cargo build --release -q -p converge-cli -p cluster-throughput
  else
    cargo build -q -p converge-cli -p cluster-throughput
  fi
fi
target_dir="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
converge="$target_dir/$PROFILE/converge"
tool="$target_dir/$PROFILE/cluster-throughput"

work="$(mktemp -d "${DATA_PARENT%/}/bench-postgres.XXXXXX")"
pids=()
schemas=()

stop_brokers() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    # A broker that does not stop within its grace period is killed.
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}

drop_schemas() {
  local schema
  for schema in "${schemas[@]}"; do
    psql -q "$PG_URL" -c "DROP SCHEMA IF EXISTS \"$schema\" CASCADE" >/dev/null 2>&1 || true
  done
  schemas=()
}

cleanup() {
  stop_brokers
  drop_schemas
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free TCP port on 127.0.0.1, chosen by the kernel.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_broker NAME ARGS...: starts `converge serve ARGS --listen 127.0.0.1:PORT`, waits for
# /readyz, sets PORT. (Not called in $(...): the pid must be recorded in this shell.)
start_broker() {
  local name="$1"
  shift
  local port
  port="$(free_port)"
  PORT="$port"
  "$converge" serve --listen "127.0.0.1:$port" --log-level warn --log-format json "$@" \
    >"$work/$name.log" 2>&1 &
  pids+=("$!")
  local pid="$!"
  for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "broker $name exited during start-up:" >&2
      cat "$work/$name.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "broker $name not ready after 30 s:" >&2
  cat "$work/$name.log" >&2
  return 1
}

# run_tool LABEL ENDPOINTS ARGS...: runs the tool, keeps its JSON line in $work/LABEL.json.
run_tool() {
  local label="$1" endpoints="$2"
  shift 2
  echo "== $label ($endpoints)" >&2
  "$tool" --label "$label" --endpoints "$endpoints" --publishers "$PUBLISHERS" \
    --subscribers "$SUBSCRIBERS" --size "$SIZE" --warmup "$WARMUP" "$@" >"$work/$label.out"
  sed -n 2p "$work/$label.out" >&2
  head -n 1 "$work/$label.out" >"$work/$label.json"
}

# measure LABEL ENDPOINTS: both passes against running brokers; the fixed-rate pass first, so
# that it does not run behind the backlog the saturating pass leaves.
measure() {
  if [[ "$RATE" != 0 ]]; then
    run_tool "$1@$RATE" "$2" --duration "$RATE_DURATION" --rate "$RATE"
  fi
  run_tool "$1" "$2" --duration "$DURATION"
}

# new_schema: sets SCHEMA to a fresh schema name, dropped at the end.
new_schema() {
  SCHEMA="bench_$(python3 -c 'import uuid; print(uuid.uuid4().hex)')"
  schemas+=("$SCHEMA")
}

store_url() {
  local sep='?'
  [[ "$PG_URL" == *\?* ]] && sep='&'
  echo "${PG_URL}${sep}schema=$1"
}

# 1. Embedded store, fsync, one node.
start_broker embedded --data-dir "$work/embedded-data" --durability fsync
measure embedded "127.0.0.1:$PORT"
stop_brokers
rm -rf "$work/embedded-data"

# 2. PostgreSQL store, one node.
new_schema
start_broker pg1 --store "$(store_url "$SCHEMA")"
measure postgres-1 "127.0.0.1:$PORT"
stop_brokers
drop_schemas

# 3. PostgreSQL store, three nodes on one schema.
new_schema
url="$(store_url "$SCHEMA")"
# The first node creates the schema (migrations); the others join it.
start_broker pg3-a --store "$url"
p1="$PORT"
start_broker pg3-b --store "$url"
p2="$PORT"
start_broker pg3-c --store "$url"
p3="$PORT"
measure postgres-3 "127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3"
stop_brokers
drop_schemas

# The table.
table() {
  jq -rs '
    def f0: if . == null then "-" else (. * 1 | round | tostring) end;
    def f1: if . == null then "-" else ((. * 10 | round) / 10 | tostring) end;
    def ratio(a; b): if a == null or b == null or b == 0 then "-" else ((a / b * 100 | round) / 100 | tostring) end;
    (["target", "publish msg/s", "receive msg/s", "e2e p50 ms", "e2e p99 ms", "publish p50 ms", "publish p99 ms", "duplicates", "backlog at end", "publish errors"] | @tsv),
    (.[] | [.label, (.publish_msgs_per_s | f0), (.receive_msgs_per_s | f0), (.e2e_p50_ms | f1), (.e2e_p99_ms | f1), (.publish_p50_ms | f1), (.publish_p99_ms | f1), .duplicates, .backlog_at_end, .publish_errors] | @tsv),
    "",
    (["ratio", "publish", "receive", "e2e p50", "e2e p99", "publish p50", "publish p99"] | @tsv),
    (. as [$e, $p1, $p3] |
      (["postgres-1 / embedded", ratio($p1.publish_msgs_per_s; $e.publish_msgs_per_s), ratio($p1.receive_msgs_per_s; $e.receive_msgs_per_s), ratio($p1.e2e_p50_ms; $e.e2e_p50_ms), ratio($p1.e2e_p99_ms; $e.e2e_p99_ms), ratio($p1.publish_p50_ms; $e.publish_p50_ms), ratio($p1.publish_p99_ms; $e.publish_p99_ms)] | @tsv),
      (["postgres-3 / postgres-1", ratio($p3.publish_msgs_per_s; $p1.publish_msgs_per_s), ratio($p3.receive_msgs_per_s; $p1.receive_msgs_per_s), ratio($p3.e2e_p50_ms; $p1.e2e_p50_ms), ratio($p3.e2e_p99_ms; $p1.e2e_p99_ms), ratio($p3.publish_p50_ms; $p1.publish_p50_ms), ratio($p3.publish_p99_ms; $p1.publish_p99_ms)] | @tsv))
  ' "$@" | column -t -s $'\t'
}

{
  echo "cluster-throughput, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
  echo "workload: $PUBLISHERS publishers (SDK Publisher, batches of up to 100, 1,000 messages outstanding each), $SUBSCRIBERS StreamingPull subscribers, $SIZE-byte messages, $WARMUP warm-up; brokers (log level warn), PostgreSQL and the load generator on this one machine"
  echo
  echo "pass 1: publishers as fast as the broker answers, $DURATION window"
  table "$work/embedded.json" "$work/postgres-1.json" "$work/postgres-3.json"
  if [[ "$RATE" != 0 ]]; then
    echo
    echo "pass 2: $RATE msg/s in total, $RATE_DURATION window"
    table "$work/embedded@$RATE.json" "$work/postgres-1@$RATE.json" "$work/postgres-3@$RATE.json"
  fi
  echo
  echo "raw results:"
  cat "$work"/*.json
} | tee "$out_file"
