#!/usr/bin/env bash
# What a compiled routing decision costs in cache misses, counted exactly: callgrind's cache simulation over
# Router.plan (its callees included), with 8 MiB read between two decisions so each starts with its code and data
# out of the caches, as in the server. Deterministic, so two builds compare without the VM's timing noise (the
# server figures of bench/decision_share.sh and bench/decision_ab.sh are what the target is judged on).
#
#   bash bench/decision_cachesim.sh [GITREF]     # default: the working tree; needs valgrind and a C compiler
#
# Builds the compiled modules of GITREF (or of the working tree) in place in a scratch copy (setup.py build_ext
# --inplace, with a wheel's flags), runs this checkout's bench/routing_decision.py with them for `balanced` on the
# route `auto` (200 timed + 500 warm-up decisions) under callgrind, and prints per decision: instructions,
# simulated last-level misses for instructions and data (L1s of 32 KiB and a 1 MiB last level, about this VM's
# per-core L2), and the functions with most misses.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REF="${1:-}"
PY="${PY:-$ROOT/.venv/bin/python}"
N="${N:-200}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
if [ -n "$REF" ]; then
    git -C "$ROOT" archive "$REF" | tar -x -C "$WORK"
else
    rsync -a --exclude .venv --exclude .git --exclude build --exclude '*.egg-info' --exclude bench/results "$ROOT/" "$WORK/"
fi
(cd "$WORK" && "$PY" setup.py -q build_ext --inplace >"$WORK/build.log" 2>&1) || { tail "$WORK/build.log" >&2; exit 1; }
cd /tmp
PYTHONPATH="$WORK" valgrind --tool=callgrind --cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64 \
    --toggle-collect='CPyDef_routing___Router___plan' --callgrind-out-file="$WORK/cg.out" \
    "$PY" "$ROOT/bench/routing_decision.py" --n "$N" --policy balanced --cold-mib 8 \
    --prompt "Say hello in one short sentence." >"$WORK/run.log" 2>&1 || { tail "$WORK/run.log" >&2; exit 1; }
grep -q "compiled (mypyc)" "$WORK/run.log" || { echo "the decide stage did not run compiled" >&2; exit 1; }
callgrind_annotate --inclusive=no --show=Ir,ILmr,DLmr --sort=ILmr "$WORK/cg.out" 2>/dev/null \
    | "$PY" "$ROOT/bench/decision_cachesim_report.py" "$((N + 500))"
