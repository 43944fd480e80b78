#!/usr/bin/env bash
# The routing decision's share of the gateway's added latency, numerator and denominator measured in the same
# phase of the same run on the same gateway process (a shared VM's speed drifts by 2x within minutes, and a
# core under concurrent load runs the same code several times slower than an idle one, so figures from
# different runs or phases do not divide):
#
#   bash bench/decision_share.sh [ROUNDS]                         # default 3; the .venv install
#   GATEWAY_PY=/tmp/other/bin/python bash bench/decision_share.sh  # another install of the gateway
#
# Each round starts the shared harness's fake upstream (core 0) and the gateway (core GATEWAY_CPUS) on the
# routed config (bench/gateway-bench-auto.yaml: `model: auto`, three candidates, the learned router,
# `balanced`), warms the gateway up with the harness's 5 s wrk warm-up, then drives the harness's load
# generator (shared/bench/load.py) phase by phase, the direct upstream then the gateway, scraping the
# gateway's own `gateway_routing_decision_seconds` histogram (every decision, timed where the pipeline
# makes it) before and after each gateway phase:
#
#   seq   SEQ_N sequential requests (the harness's "added latency p50": gateway p50 minus direct p50);
#         share = the decisions of this phase over that added latency.
#   conc  CONC connections for DURATION s (the core saturated); share = the decisions' mean over the
#         gateway's CPU time per request in this phase, which is what a decision adds to the latency of a
#         saturated gateway (its queueing delay grows with the CPU time per request), and over the added
#         p50 latency.
#
# bench/routing_decision.py (warm, in-process) runs before and after each round on the same core, for
# reference.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
ROUNDS="${1:-3}"
PY="${GATEWAY_PY:-$ROOT/.venv/bin/python}"
BIN="$(dirname "$PY")/gateway"
BENCH_PY="${BENCH_PY:-/tmp/bench-venv/bin/python}"
OUT="${RESULTS:-$ROOT/bench/results/share-$(date +%Y%m%d-%H%M%S)}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18610}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"
GATEWAY_CPUS="${GATEWAY_CPUS:-1}"
LOADGEN_CPUS="${LOADGEN_CPUS:-0}"
SEQ_N="${SEQ_N:-1000}"
CONC="${CONC:-32}"
DURATION="${DURATION:-10}"
PROMPT="Say hello in one short sentence."  # the harness's request
mkdir -p "$OUT"
cd "$ROOT"
bash "$HARNESS/setup.sh" >/dev/null 2>&1 || true  # ends with `wrk -v | head -1`, which exits 1
[ -x "$BENCH_PY" ] || BENCH_PY="$(command -v python3)"
decide() { taskset -c "$GATEWAY_CPUS" "$PY" bench/routing_decision.py --n 5000 --prompt "$PROMPT" >"$1" 2>/dev/null; }
wait_up() {
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    return 1
}
scrape() { curl -sf "http://127.0.0.1:$GATEWAY_PORT/metrics" >"$1"; }
# load NAME BASE_URL MODEL PID PHASES WARMUP_S
load() {
    "$BENCH_PY" "$HARNESS/load.py" run --name "$1" --base-url "$2" --model "$3" --server-pid "$4" \
        --cpus "$LOADGEN_CPUS" --phases "$5" --warmup-s "$6" --seq-n "$SEQ_N" --conc "$CONC" \
        --duration "$DURATION" --out "$OUT/$1.json" >/dev/null 2>>"$OUT/load.log"
}
GW=""
UP=""
stop() {
    if [ -n "$GW" ]; then kill "$GW" 2>/dev/null || true; wait "$GW" 2>/dev/null || true; fi
    if [ -n "$UP" ]; then kill -- "-$UP" 2>/dev/null || true; fi
    GW=""
    UP=""
}
trap stop EXIT
UPSTREAM="http://127.0.0.1:$UPSTREAM_PORT"
GATEWAY="http://127.0.0.1:$GATEWAY_PORT"
for r in $(seq 1 "$ROUNDS"); do
    decide "$OUT/decision-$r-before.txt"
    setsid taskset -c "$LOADGEN_CPUS" "$BENCH_PY" "$HARNESS/upstream.py" --port "$UPSTREAM_PORT" \
        >"$OUT/upstream-$r.log" 2>&1 &
    UP=$!
    wait_up "$UPSTREAM/v1/models"
    # Started from $OUT, away from the checkout: an install whose `gateway serve` predates its -P flag would
    # import the checkout's sources before the install being measured.
    (cd "$OUT" && BENCH_UPSTREAM_BASE="$UPSTREAM/v1" \
        GATEWAY_LEDGER__URL="sqlite+aiosqlite:///$OUT/ledger-$r.db" exec taskset -c "$GATEWAY_CPUS" "$BIN" serve \
        --config "$ROOT/bench/gateway-bench-auto.yaml" --port "$GATEWAY_PORT" >"$OUT/gateway-$r.log" 2>&1) &
    GW=$!
    wait_up "$GATEWAY/v1/models"
    load "warmup-$r" "$GATEWAY" auto "$GW" seq 5
    scrape "$OUT/metrics-$r-0.txt"
    load "direct-seq-$r" "$UPSTREAM" fake-gpt 0 seq 0
    load "gateway-seq-$r" "$GATEWAY" auto "$GW" seq 0
    scrape "$OUT/metrics-$r-1.txt"
    load "direct-conc-$r" "$UPSTREAM" fake-gpt 0 conc 0
    load "gateway-conc-$r" "$GATEWAY" auto "$GW" conc 0
    scrape "$OUT/metrics-$r-2.txt"
    stop
    decide "$OUT/decision-$r-after.txt"
    echo "round $r done" >&2
done
"$PY" bench/decision_share_report.py "$OUT" "$ROUNDS" | tee "$OUT/report.txt"
