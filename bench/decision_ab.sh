#!/usr/bin/env bash
# Two installs' routing decision, in the server, paired: the way to tell whether a change to the decide stage
# helped (on this shared VM the speed drifts by 2x within minutes, more than most changes move it).
#
#   bash bench/decision_ab.sh PYTHON_A PYTHON_B [REPS]      # e.g. /tmp/before/bin/python /tmp/after/bin/python 10
#
# Starts the shared harness's fake upstream (core 0) and one gateway per install (both on core 1, idle while
# the other is measured) on bench/gateway-bench-auto.yaml, warms both up, then REPS times (default 10) runs
# SEQ_N (default 300) sequential requests (shared/bench/load.py) against each, in ABBA order, and the direct
# upstream after them; each gateway's `gateway_routing_decision_seconds` is scraped around its phase. Prints,
# per rep and as medians, each install's added latency p50 and decision p50 and mean.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
A="$1"
B="$2"
REPS="${3:-10}"
SEQ_N="${SEQ_N:-300}"
BENCH_PY="${BENCH_PY:-/tmp/bench-venv/bin/python}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18611}"
PORT_A="${PORT_A:-8091}"
PORT_B="${PORT_B:-8092}"
OUT="${RESULTS:-$ROOT/bench/results/ab-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
cd "$ROOT"
bash "$HARNESS/setup.sh" >/dev/null 2>&1 || true  # ends with `wrk -v | head -1`, which exits 1
[ -x "$BENCH_PY" ] || BENCH_PY="$(command -v python3)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -- "$p" 2>/dev/null || true; done' EXIT
setsid taskset -c 0 "$BENCH_PY" "$HARNESS/upstream.py" --port "$UPSTREAM_PORT" >"$OUT/upstream.log" 2>&1 &
PIDS+=("-$!")
start() {  # PYTHON PORT
    (cd "$OUT" && BENCH_UPSTREAM_BASE="http://127.0.0.1:$UPSTREAM_PORT/v1" \
        GATEWAY_LEDGER__URL="sqlite+aiosqlite:///$OUT/ledger-$2.db" exec taskset -c 1 "$(dirname "$1")/gateway" serve \
        --config "$ROOT/bench/gateway-bench-auto.yaml" --port "$2" >"$OUT/gateway-$2.log" 2>&1) &
    PIDS+=("$!")
}
start "$A" "$PORT_A"
start "$B" "$PORT_B"
for p in "$UPSTREAM_PORT" "$PORT_A" "$PORT_B"; do
    for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$p/v1/models" && break; sleep 0.1; done
done
load() {  # NAME PORT MODEL WARMUP_S
    "$BENCH_PY" "$HARNESS/load.py" run --name "$1" --base-url "http://127.0.0.1:$2" --model "$3" --cpus 0 \
        --phases seq --warmup-s "$4" --seq-n "$SEQ_N" --out "$OUT/$1.json" >/dev/null 2>>"$OUT/load.log"
}
load warmup-a "$PORT_A" auto 3
load warmup-b "$PORT_B" auto 3
for r in $(seq 1 "$REPS"); do
    if [ $((r % 2)) = 1 ]; then order="$PORT_A $PORT_B"; else order="$PORT_B $PORT_A"; fi
    for p in $order; do
        curl -sf "http://127.0.0.1:$p/metrics" >"$OUT/metrics-$p-$r-0.txt"
        load "seq-$p-$r" "$p" auto 0
        curl -sf "http://127.0.0.1:$p/metrics" >"$OUT/metrics-$p-$r-1.txt"
    done
    load "direct-$r" "$UPSTREAM_PORT" fake-gpt 0
done
"$ROOT/.venv/bin/python" - "$OUT" "$REPS" "$PORT_A" "$PORT_B" <<'PY'
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, "bench")
from decision_share_report import phase  # noqa: E402

out, reps, ports = Path(sys.argv[1]), int(sys.argv[2]), {"A": sys.argv[3], "B": sys.argv[4]}
rows: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
for r in range(1, reps + 1):
    direct = json.loads((out / f"direct-{r}.json").read_text())["seq"]["p50_ms"] * 1000
    line = []
    for name, port in ports.items():
        added = json.loads((out / f"seq-{port}-{r}.json").read_text())["seq"]["p50_ms"] * 1000 - direct
        p50, mean, _ = phase(out / f"metrics-{port}-{r}-0.txt", out / f"metrics-{port}-{r}-1.txt")
        rows[name].append((added, p50, mean))
        line.append(f"{name}: added {added:5.0f} us, decision p50 {p50:5.1f} mean {mean:5.1f} ({p50 / added * 100:4.2f} %)")
    print(f"rep {r:2}: " + " | ".join(line))
for name, values in rows.items():
    added, p50, mean = (statistics.median(v[i] for v in values) for i in range(3))
    share = statistics.median(v[1] / v[0] * 100 for v in values)
    print(f"{name}: medians: added latency p50 {added:.0f} us, decision p50 {p50:.1f} us, mean {mean:.1f} us, share {share:.2f} %")
PY
