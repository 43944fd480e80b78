#!/usr/bin/env bash
# The quality monitor's overhead on the request path: the routed path (model: auto) with the monitor off and
# on, each beside the direct upstream in the shared harness (same machine, back to back).
#   bash bench/quality_overhead.sh                          # results in bench/results/quality-<timestamp>/{off,on}
#   QUALITY_SAMPLE_RATE=1 bash bench/quality_overhead.sh    # every answer judged (the queue fills and drops)
#   HARNESS=/work/shared/bench ...                          # from a git worktree (default: ../shared/bench)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/bench/results/quality-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
export SKIP_LITELLM=1 OTHER_MODEL=auto
export QUALITY_SAMPLE_RATE="${QUALITY_SAMPLE_RATE:-0.02}"
export GATEWAY_BENCH_CONFIG=bench/gateway-bench-quality.yaml
QUALITY_ENABLED=false RESULTS="$OUT/off" bash "$ROOT/bench/run_side_by_side.sh"
QUALITY_ENABLED=true RESULTS="$OUT/on" bash "$ROOT/bench/run_side_by_side.sh"
echo "monitor off: $OUT/off/table.txt   monitor on (sample_rate $QUALITY_SAMPLE_RATE): $OUT/on/table.txt"
"$ROOT/.venv/bin/python" - "$OUT/on/ledger.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
n = db.execute("select count(*) from gw_ledger where policy = 'monitor'").fetchone()[0]
c = db.execute("select count(*) from gw_ledger where policy is null or policy != 'monitor'").fetchone()[0]
print(f"monitor on: {c} client requests, {n} monitoring calls in the ledger")
PY
