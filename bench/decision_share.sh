#!/usr/bin/env bash
# The routing decision's share of the gateway's added latency (issue 3's target: under 2 %), both measured in
# the same run, on the same gateway process (a shared VM's speed drifts by 2x within minutes, so figures
# from separate runs do not divide):
#
#   bash bench/decision_share.sh [ROUNDS]                         # default 3; the .venv install
#   GATEWAY_PY=/tmp/prod/bin/python bash bench/decision_share.sh  # another install, e.g. a wheel (compiled)
#
# Each round starts the gateway (pinned to the harness's gateway core) on the routed config
# (bench/gateway-bench-auto.yaml: `model: auto`, three candidates, the learned router, `balanced`), runs the
# shared side-by-side harness against it (added latency p50 = its sequential p50 minus the direct
# upstream's), then reads the gateway's own `gateway_routing_decision_seconds` histogram: every decision
# it made during the run, timed where the pipeline makes it. The share is that decision time over the added
# latency. bench/routing_decision.py runs before and after each round on the same core, for reference.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
ROUNDS="${1:-3}"
PY="${GATEWAY_PY:-$ROOT/.venv/bin/python}"
BIN="$(dirname "$PY")/gateway"
OUT="${RESULTS:-$ROOT/bench/results/share-$(date +%Y%m%d-%H%M%S)}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18610}"
GATEWAY_CPUS="${GATEWAY_CPUS:-1}"
PROMPT="Say hello in one short sentence."  # the harness's request
mkdir -p "$OUT"
cd "$ROOT"
bash "$HARNESS/setup.sh" >/dev/null 2>&1 || true  # ends with `wrk -v | head -1`, which exits 1
decide() { taskset -c "$GATEWAY_CPUS" "$PY" bench/routing_decision.py --n 5000 --prompt "$PROMPT" >"$1" 2>/dev/null; }
GW=""
trap '[ -n "$GW" ] && kill "$GW" 2>/dev/null || true' EXIT
for r in $(seq 1 "$ROUNDS"); do
    decide "$OUT/decision-$r-before.txt"
    # Started from $OUT, away from the checkout: an install whose `gateway serve` predates its -P flag would
    # import the checkout's sources before the install being measured.
    (cd "$OUT" && BENCH_UPSTREAM_BASE="http://127.0.0.1:$UPSTREAM_PORT/v1" \
        GATEWAY_LEDGER__URL="sqlite+aiosqlite:///$OUT/ledger-$r.db" exec taskset -c "$GATEWAY_CPUS" "$BIN" serve \
        --config "$ROOT/bench/gateway-bench-auto.yaml" --port 8080 >"$OUT/gateway-$r.log" 2>&1) &
    GW=$!
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null http://127.0.0.1:8080/v1/models && break
        sleep 0.1
    done
    SKIP_LITELLM=1 UPSTREAM_PORT="$UPSTREAM_PORT" GATEWAY_CPUS="$GATEWAY_CPUS" OTHER_NAME=gateway OTHER_MODEL=auto \
        OTHER_PID="$GW" RESULTS="$OUT/side-by-side-$r" "$HARNESS/run_compare.sh" http://127.0.0.1:8080 \
        >"$OUT/side-by-side-$r.log" 2>&1
    curl -sf http://127.0.0.1:8080/metrics >"$OUT/metrics-$r.txt"
    kill "$GW" && wait "$GW" 2>/dev/null || true
    GW=""
    decide "$OUT/decision-$r-after.txt"
    echo "round $r done ($(grep -o 'decide stage: [^"]*' "$OUT/gateway-$r.log"))" >&2
done
"$PY" - "$OUT" "$ROUNDS" <<'PY'
import re
import statistics
import sys
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])


def bench_p50(path: Path, policy: str) -> float:
    return float(re.search(rf"^{re.escape(policy)}\s+([\d.]+)", path.read_text(), re.M).group(1))


def histogram(path: Path) -> tuple[float, float, int]:
    """(p50, mean) in seconds and the count, from the gateway's decision-time histogram."""
    text = path.read_text()
    name = "gateway_routing_decision_seconds"
    buckets = [(float(le), float(n)) for le, n in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)', text, re.M)]
    total = float(re.search(rf"^{name}_count (\S+)", text, re.M).group(1))
    mean = float(re.search(rf"^{name}_sum (\S+)", text, re.M).group(1)) / total
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:  # linear interpolation inside the bucket holding the median
        if cumulative >= total / 2:
            p50 = lower + (bound - lower) * (total / 2 - below) / max(cumulative - below, 1.0)
            break
        lower, below = bound, cumulative
    return p50, mean, int(total)


print((out / "decision-1-before.txt").read_text().splitlines()[0])
rows: dict[str, list[float]] = {"in-gateway p50": [], "in-gateway mean": [], "bench p50": []}
for r in range(1, rounds + 1):
    table = (out / f"side-by-side-{r}" / "table.txt").read_text()
    added_us = float(re.search(r"added latency p50 ms\s+([+-][\d.]+)", table).group(1)) * 1000
    p50, mean, count = histogram(out / f"metrics-{r}.txt")
    bench = (bench_p50(out / f"decision-{r}-before.txt", "balanced") + bench_p50(out / f"decision-{r}-after.txt", "balanced")) / 2
    for key, us in (("in-gateway p50", p50 * 1e6), ("in-gateway mean", mean * 1e6), ("bench p50", bench)):
        rows[key].append(us / added_us * 100)
    print(
        f"round {r}: added latency p50 {added_us:.0f} us; {count} decisions in the gateway: p50 {p50 * 1e6:.1f} us "
        f"({p50 * 1e6 / added_us * 100:.2f} %), mean {mean * 1e6:.1f} us ({mean * 1e6 / added_us * 100:.2f} %); "
        f"routing_decision.py balanced p50 {bench:.1f} us ({bench / added_us * 100:.2f} %)"
    )
print("decision time as a share of the added latency p50, median [min-max] over the rounds:")
for key, values in rows.items():
    print(f"  {key:16} {statistics.median(values):5.2f} %  [{min(values):.2f}-{max(values):.2f}]")
PY
