#!/usr/bin/env bash
# The gateway's overhead with OpenTelemetry tracing off and on, each beside the direct upstream in the
# shared harness (same machine, back to back), spans exported to an OTLP sink on loopback.
#   bash bench/tracing_overhead.sh          # results in bench/results/tracing-<timestamp>/{off,on}
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/bench/results/tracing-$(date +%Y%m%d-%H%M%S)}"
SINK_PORT="${SINK_PORT:-14318}"
mkdir -p "$OUT"
"$ROOT/.venv/bin/python" "$ROOT/bench/otlp_sink.py" --port "$SINK_PORT" > "$OUT/sink.log" 2>&1 &
SINK=$!
trap 'kill $SINK 2>/dev/null || true' EXIT
export SKIP_LITELLM=1
env -u OTEL_EXPORTER_OTLP_ENDPOINT RESULTS="$OUT/off" bash "$ROOT/bench/run_side_by_side.sh"
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" RESULTS="$OUT/on" bash "$ROOT/bench/run_side_by_side.sh"
kill -TERM $SINK; wait $SINK 2>/dev/null || true
cat "$OUT/sink.log"
