#!/usr/bin/env bash
# The throughput of several gateway source trees at 32 connections, measured in alternation.
#
#   bash bench/throughput_ab.sh REPS NAME=TREE [NAME=TREE ...]
#   e.g.  git archive b1ce5a1 | tar -x -C /tmp/before
#         bash bench/throughput_ab.sh 3 before=/tmp/before after=.
#   env:  DURATION=12 (seconds of wrk per run, after a 5 s warm-up)
#
# Each run starts the shared harness's fake upstream (core 0) and a fresh `gateway serve --config
# bench/gateway-bench.yaml` from the tree (core 1, SQLite ledger), then `wrk -t1 -c32` on core 0 with the harness's
# chat script, as the side-by-side harness's concurrent phase does. The gateway's core is saturated, so req/s is
# the inverse of its CPU per request. Trees run in turn, REPS rounds; the end prints each tree's runs and mean.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
BENCH_PY="${BENCH_PY:-/tmp/bench-venv/bin/python}"
REPS="$1"; shift
DURATION="${DURATION:-12}"; UP_PORT="${UP_PORT:-18681}"; GW_PORT="${GW_PORT:-18682}"
OUT="$(mktemp -d)"
[ -x "$BENCH_PY" ] && command -v wrk >/dev/null || { echo "run bash $HARNESS/setup.sh first" >&2; exit 1; }

stop() {
  pkill -TERM -f -- "--port ($GW_PORT|$UP_PORT)" 2>/dev/null || true
  for _ in $(seq 40); do pgrep -f -- "--port ($GW_PORT|$UP_PORT)" >/dev/null || break; sleep 0.25; done
  pkill -KILL -f -- "--port ($GW_PORT|$UP_PORT)" 2>/dev/null || true
}
trap stop EXIT

run() {  # name tree
  local name="$1" tree; tree="$(cd "$2" && pwd)"
  stop
  (setsid taskset -c 0 "$BENCH_PY" "$HARNESS/upstream.py" --port "$UP_PORT" >"$OUT/upstream.log" 2>&1 </dev/null &)
  rm -f "$OUT/ledger.db"
  (cd "$OUT" && env PYTHONPATH="$tree" BENCH_UPSTREAM_BASE="http://127.0.0.1:$UP_PORT/v1" \
    GATEWAY_LEDGER__URL="sqlite+aiosqlite:///$OUT/ledger.db" setsid taskset -c 1 "$ROOT/.venv/bin/gateway" serve \
    --config "$tree/bench/gateway-bench.yaml" --port "$GW_PORT" >"$OUT/gateway.log" 2>&1 </dev/null &)
  for _ in $(seq 200); do
    curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW_PORT/v1/chat/completions" \
      -H 'content-type: application/json' \
      -d '{"model":"fake-gpt","messages":[{"role":"user","content":"hi"}]}' 2>/dev/null | grep -q 200 && break
    sleep 0.1
  done
  taskset -c 0 wrk -t1 -c32 -d5s -s "$HARNESS/lua/chat.lua" "http://127.0.0.1:$GW_PORT" >/dev/null 2>&1
  local rps
  rps="$(taskset -c 0 wrk -t1 -c32 -d"${DURATION}s" -s "$HARNESS/lua/chat.lua" "http://127.0.0.1:$GW_PORT" \
    | awk '/Requests\/sec/ {print $2}')"
  echo "$rps" >>"$OUT/$name.rps"
  printf '%10s run: %s req/s\n' "$name" "$rps"
}

for _ in $(seq "$REPS"); do
  for spec in "$@"; do run "${spec%%=*}" "${spec#*=}"; done
done
echo "each tree's runs and mean req/s at 32 connections, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for spec in "$@"; do
  name="${spec%%=*}"
  printf '%10s: %s  mean %s\n' "$name" "$(paste -sd' ' "$OUT/$name.rps")" \
    "$(awk '{s += $1} END {printf "%.0f", s / NR}' "$OUT/$name.rps")"
done
