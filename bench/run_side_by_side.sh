#!/usr/bin/env bash
# Measure the gateway beside the direct fake upstream (and LiteLLM proxy) with the shared harness.
#   bash bench/run_side_by_side.sh            # direct vs LiteLLM vs gateway
#   SKIP_LITELLM=1 bash bench/run_side_by_side.sh
#   GATEWAY_PORT=18652 UPSTREAM_PORT=18651 LITELLM_PORT=14651 bash bench/run_side_by_side.sh   # ports of your own
#   GATEWAY_SRC=/tmp/before bash bench/run_side_by_side.sh   # another source tree (e.g. `git archive REV`), served
#                                                             # from this checkout's virtual environment
# Results: bench/results/<timestamp>/table.txt
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"
# setup.sh ends with `wrk -v | head -1`, which exits 1 under pipefail even when all is installed.
bash "$HARNESS/setup.sh" >/dev/null 2>&1 || true
command -v wrk >/dev/null && [ -x /tmp/bench-venv/bin/python ] || { echo "bench setup failed" >&2; exit 1; }
GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/.venv/bin/gateway}"
GATEWAY_SRC="${GATEWAY_SRC:-$ROOT}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"
export RESULTS="${RESULTS:-$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)}"
export OTHER_NAME=gateway OTHER_KEY="" OTHER_MODEL="${OTHER_MODEL:-fake-gpt}"
export OTHER_CMD="env PYTHONPATH=$GATEWAY_SRC GATEWAY_LEDGER__URL=sqlite+aiosqlite:///$RESULTS/ledger.db $GATEWAY_BIN serve --config $GATEWAY_SRC/${GATEWAY_BENCH_CONFIG:-bench/gateway-bench.yaml} --port $GATEWAY_PORT"
"$HARNESS/run_compare.sh" "http://127.0.0.1:$GATEWAY_PORT"
cat "$RESULTS/table.txt"
