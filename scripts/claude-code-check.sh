#!/usr/bin/env bash
# Claude Code through the gateway, for real: npm's @anthropic-ai/claude-code, pointed with ANTHROPIC_BASE_URL at a
# gateway that serves `claude-sonnet-4-5` from the tests' scripted upstream (which answers "Hello"), runs
# `claude -p` twice (a plain prompt and "ultrathink"). Claude Code sends `thinking` by default for that model name.
# Prints each JSON result; exits non-zero unless both are successes answering "Hello". Not part of the test suite
# (it needs Claude Code from the npm registry); the request shapes it sends are (tests/frontdoors/test_messages_*).
#
#   bash scripts/claude-code-check.sh [VERSION]      # default: latest (checked with 2.1.197)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

npm install --prefix "$WORK/npm" --silent "@anthropic-ai/claude-code@${1:-latest}" >/dev/null
CLAUDE="$WORK/npm/node_modules/.bin/claude"
read -r UP GW < <("$PY" -c 'from tests.helpers.ports import free_port; print(free_port(), free_port())')

cd "$ROOT"
PYTHONPATH="$ROOT" "$PY" -c "
import uvicorn
from tests.frontdoors.scripted_upstream import _app
uvicorn.run(_app([]), host='127.0.0.1', port=$UP, log_level='warning')" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
cat >"$WORK/gateway.yaml" <<YAML
models:
  - name: claude-sonnet-4-5
    backend: openai
    base_url: http://127.0.0.1:$UP/v1
    upstream_model: scripted
cache:
  enabled: false
ledger:
  url: sqlite+aiosqlite:///$WORK/ledger.db
YAML
"$ROOT/.venv/bin/gateway" serve --config "$WORK/gateway.yaml" --port "$GW" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 120); do curl -sf -o /dev/null "http://127.0.0.1:$GW/v1/models" && break; sleep 0.25; done

status=0
for prompt in "say hello" "ultrathink: say hello"; do
  out="$(cd "$WORK" && HOME="$WORK/home" ANTHROPIC_BASE_URL="http://127.0.0.1:$GW" ANTHROPIC_API_KEY=sk-unused \
    DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
    timeout 120 "$CLAUDE" -p "$prompt" --model claude-sonnet-4-5 --output-format json 2>&1 || true)"
  echo "$prompt -> $out"
  echo "$out" | "$PY" -c 'import json, sys; d = json.loads(sys.stdin.read()); sys.exit(not (d["subtype"] == "success" and d["result"] == "Hello"))' \
    || { echo "FAILED: $prompt" >&2; status=1; }
done
"$CLAUDE" --version
exit $status
