#!/usr/bin/env bash
# The one-connection latency (p50/p90/p99), or the throughput at 32 connections (PHASE=conc), of several gateway
# source trees, measured in alternation.
#
#   bash bench/seq_tail_ab.sh REPS NAME=TREE [NAME=TREE ...]
#   e.g.  git archive HEAD~1 | tar -x -C /tmp/before
#         bash bench/seq_tail_ab.sh 5 before=/tmp/before after=.
#   env:  PHASE=seq (or conc: `bench/throughput_ab.sh` sets it)  SEQ_N=2000 (requests per seq run)  DURATION=12
#         (seconds per conc run)  WARMUP_S=0 (the harness's wrk warm-up at 32 connections first; the side-by-side
#         harness uses 5)  LEDGER_ENV="" (e.g. "GATEWAY_LEDGER__BATCH_SIZE=100000
#         GATEWAY_LEDGER__FLUSH_INTERVAL_SECONDS=120": no ledger write during the run)
#
# Each run starts the shared harness's fake upstream (core 0) and a fresh `gateway serve --config
# bench/gateway-bench.yaml` from the tree (core 1, SQLite ledger), then the harness's sequential phase
# (`load.py run --phases seq`: a raw keep-alive socket, one request at a time) or its concurrent one (`--phases
# conc`: `wrk -t1 -c32` on core 0; the gateway's core is saturated, so req/s is the inverse of its CPU per request),
# as `bench/run_side_by_side.sh` does. Trees run in turn, REPS rounds, so that a noisy minute hits them all; the end
# prints each tree's median of its runs (and, for conc, the mean). Latencies include the upstream's (~0.02 ms).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
BENCH_PY="${BENCH_PY:-/tmp/bench-venv/bin/python}"
REPS="$1"; shift
PHASE="${PHASE:-seq}"; SEQ_N="${SEQ_N:-2000}"; DURATION="${DURATION:-12}"; WARMUP_S="${WARMUP_S:-0}"
LEDGER_ENV="${LEDGER_ENV:-}"
case "$PHASE" in seq) PHASE_ARGS=(--seq-n "$SEQ_N") ;; conc) PHASE_ARGS=(--duration "$DURATION" --cpus 0) ;;
  *) echo "PHASE is seq or conc, not $PHASE" >&2; exit 2 ;; esac
UP_PORT="${UP_PORT:-18671}"; GW_PORT="${GW_PORT:-18672}"
OUT="$(mktemp -d)"
[ -x "$BENCH_PY" ] || { echo "run bash $HARNESS/setup.sh first" >&2; exit 1; }

stop() {
  pkill -TERM -f -- "--port ($GW_PORT|$UP_PORT)" 2>/dev/null || true
  for _ in $(seq 40); do pgrep -f -- "--port ($GW_PORT|$UP_PORT)" >/dev/null || break; sleep 0.25; done
  pkill -KILL -f -- "--port ($GW_PORT|$UP_PORT)" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT

one() { # NAME TREE RUN
  local name=$1 tree=$2 run=$3 dir="$OUT/$1-$3"
  mkdir -p "$dir"
  if curl -sf "127.0.0.1:$GW_PORT/v1/models" >/dev/null 2>&1; then echo "port $GW_PORT is busy" >&2; exit 1; fi
  setsid taskset -c 0 "$BENCH_PY" "$HARNESS/upstream.py" --port "$UP_PORT" >"$dir/upstream.log" 2>&1 &
  sleep 0.5
  # shellcheck disable=SC2086
  env $LEDGER_ENV PYTHONPATH="$tree" BENCH_UPSTREAM_BASE="http://127.0.0.1:$UP_PORT/v1" \
    GATEWAY_LEDGER__URL="sqlite+aiosqlite:///$dir/ledger.db" \
    setsid taskset -c 1 "$ROOT/.venv/bin/gateway" serve --config "$tree/bench/gateway-bench.yaml" --port "$GW_PORT" \
    >"$dir/gateway.log" 2>&1 &
  for _ in $(seq 100); do curl -sf "127.0.0.1:$GW_PORT/v1/models" >/dev/null 2>&1 && break; sleep 0.2; done
  (cd "$HARNESS" && "$BENCH_PY" load.py run --base-url "http://127.0.0.1:$GW_PORT" --phases "$PHASE" \
    --warmup-s "$WARMUP_S" "${PHASE_ARGS[@]}" --out "$dir/run.json" >"$dir/load.log" 2>&1)
  stop
  "$BENCH_PY" - "$dir/run.json" "$name" "$run" "$PHASE" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))[sys.argv[4]]
if sys.argv[4] == "seq":
    print(f"{sys.argv[2]:>10} run {sys.argv[3]}: p50 {s['p50_ms']:.3f}  p90 {s['p90_ms']:.3f}  p99 {s['p99_ms']:.3f}  mean {s['mean_ms']:.3f} ms")
else:
    print(f"{sys.argv[2]:>10} run {sys.argv[3]}: {s['rps']:.1f} req/s  p50 {s['p50_ms']:.2f}  p99 {s['p99_ms']:.2f} ms")
EOF
}

for run in $(seq "$REPS"); do
  for spec in "$@"; do
    one "${spec%%=*}" "$(cd "${spec#*=}" && pwd)" "$run" | tee -a "$OUT/all.txt"
  done
done
echo "medians over $REPS $PHASE runs (warm-up ${WARMUP_S}s), $(uptime | sed 's/.*load/load/')"
"$BENCH_PY" - "$OUT/all.txt" <<'EOF'
import re, statistics, sys
seq, conc = {}, {}
for line in open(sys.argv[1]):
    if m := re.match(r"\s*(\S+) run \d+: p50 (\S+)  p90 (\S+)  p99 (\S+)  mean (\S+) ms", line):
        seq.setdefault(m[1], []).append(tuple(map(float, m.groups()[1:])))
    elif m := re.match(r"\s*(\S+) run \d+: (\S+) req/s", line):
        conc.setdefault(m[1], []).append(float(m[2]))
for name, rows in seq.items():
    p50, p90, p99, mean = (statistics.median(col) for col in zip(*rows))
    print(f"{name:>10}: p50 {p50:.3f}  p90 {p90:.3f}  p99 {p99:.3f}  mean {mean:.3f} ms")
for name, rps in conc.items():
    print(f"{name:>10}: median {statistics.median(rps):.0f}  mean {statistics.mean(rps):.0f} req/s ({len(rps)} runs)")
EOF
