#!/usr/bin/env bash
# The compose stack, run for real with podman: images built, services up, traffic through the containers.
#
#   bash scripts/stack-test.sh        # tests/deploy/test_stack.py runs it; needs root, podman, docker-compose
#
# 1. images, each skipped when its inputs' hash matches the label of the image already built:
#    a Debian base (debootstrap), stand-ins for redis/postgres/prometheus/nginx and the gateway's Python base
#    (deploy/stack-test/Containerfile), a wheelhouse (scripts/stack-wheelhouse.sh) and the gateway image,
#    built air-gapped from ./Dockerfile (BASE_IMAGE + wheelhouse build context, no network)
# 2. the real compose.yaml + deploy/stack-test/compose.test.yaml (images only), profiles cpu and lb,
#    .env.example's settings, through Debian's docker-compose on podman's Docker API socket
# 3. scripts/stack_check.py: chat/stream on auto, Redis cache hit, ledger rows, Prometheus, dashboard;
#    Redis restarted under load; two gateway replicas behind nginx (both serve, one ledger, one budget)
# 4. `down -v`, then checks that no container, volume or network of the project is left
#
# Containers share a private podman network (names resolve through aardvark-dns); the host reaches them
# only through ports published on 127.0.0.1. Podman is configured by a file of our own (CONTAINERS_CONF):
# runc, cgroupfs, no ulimit changes (see docs/deploy.md). Podman's health checks need systemd timers,
# which this machine has not: a loop here runs them (`podman healthcheck run`) every 2 s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
CACHE="${STACK_CACHE:-$HOME/.cache/llm-gateway/stack}"
PROJECT="${STACK_PROJECT:-llm-gateway-stack}"
PREFIX=localhost/llm-gateway-stack
PY="$ROOT/.venv/bin/python"
log() { echo "[stack] $(date +%T) $*" >&2; }
mkdir -p "$CACHE"

for tool in podman docker-compose iptables; do
    command -v "$tool" >/dev/null || { log "$tool is missing (apt-get install podman runc netavark aardvark-dns iptables debootstrap docker-compose)"; exit 2; }
done
[[ -x "$PY" ]] || { log "no .venv: run scripts/test.sh first"; exit 2; }

export CONTAINERS_CONF="$CACHE/containers.conf"
cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
CONF

hash_of() { sha256sum "$@" | sha256sum | cut -c1-16; }
label_of() { podman image inspect --format '{{index .Labels "llm-gateway-stack.hash"}}' "$1" 2>/dev/null || true; }

# -- 1. images ------------------------------------------------------------------------------------------
if ! podman image exists "$PREFIX/debian:bookworm"; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing"; exit 2; }
    log "debootstrap: a Debian bookworm base image"
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1
    tar -C "$rootfs" -c . | podman import -q - "$PREFIX/debian:bookworm" >/dev/null
    rm -rf "$rootfs"
fi
base_id="$(podman image inspect --format '{{.Id}}' "$PREFIX/debian:bookworm")"

standin_hash="$( (echo "$base_id"; cat deploy/stack-test/Containerfile deploy/stack-test/*.sh) | sha256sum | cut -c1-16)"
for target in python redis postgres prometheus nginx; do
    if [[ "$(label_of "$PREFIX/$target:test")" != "$standin_hash" ]]; then
        log "building stand-in $target"
        podman build -q --network=host --format docker --target "$target" --label "llm-gateway-stack.hash=$standin_hash" \
            -t "$PREFIX/$target:test" -f deploy/stack-test/Containerfile deploy/stack-test >/dev/null
    fi
done

python_id="$(podman image inspect --format '{{.Id}}' "$PREFIX/python:test")"
# The wheelhouse depends on the dependency lists of pyproject.toml, not on the rest of the file.
deps="$("$PY" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(p["dependencies"], p["optional-dependencies"]["semantic"])')"
wheel_hash="$( (echo "$python_id"; echo "$deps"; cat scripts/stack-wheelhouse.sh) | sha256sum | cut -c1-16)"
wheels="build/stack/wheels-$wheel_hash"
if [[ ! -f "$wheels/.complete" ]]; then
    log "wheelhouse for the gateway image"
    rm -rf build/stack/wheels-*
    bash scripts/stack-wheelhouse.sh "$wheels" "$PREFIX/python:test"
    touch "$wheels/.complete"
fi

gateway_hash="$( (echo "$wheel_hash"; cat Dockerfile .dockerignore pyproject.toml README.md gateway.example.yaml;
    find gateway backends policies cache -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | sort | xargs cat) \
    | sha256sum | cut -c1-16)"
GATEWAY_IMAGE="$PREFIX/gateway:$gateway_hash"
if ! podman image exists "$GATEWAY_IMAGE"; then
    log "building the gateway image (air-gapped: BASE_IMAGE + wheelhouse, no network)"
    podman build -q --network=none --format docker --build-arg "BASE_IMAGE=$PREFIX/python:test" \
        --build-context "wheelhouse=$wheels" --label "llm-gateway-stack.hash=$gateway_hash" -t "$GATEWAY_IMAGE" . >/dev/null
    # Older gateway images of this test are dead weight (the shared layers stay).
    podman images --format '{{.Repository}}:{{.Tag}}' "$PREFIX/gateway" | grep -vx "$GATEWAY_IMAGE" | xargs -r podman rmi -f >/dev/null 2>&1 || true
fi
log "images ready (gateway $GATEWAY_IMAGE)"

# -- 2. the stack ---------------------------------------------------------------------------------------
work="$(mktemp -d)"
sock="$work/podman.sock"
podman system service --time=0 "unix://$sock" >"$work/service.log" 2>&1 &
service_pid=$!
health_pid=""
export DOCKER_HOST="unix://$sock"

ports=($("$PY" - <<'PYEOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PYEOF
))
# .env.example as a user copies it, with the cpu and lb profiles, the simulated GPT-4 and free ports.
envfile="$work/stack.env"
{
    grep -vE '^(COMPOSE_PROFILES|OPENAI_BASE_URL|GATEWAY_PORT|PROMETHEUS_PORT|LB_PORT|GATEWAY_IMAGE)=' .env.example
    echo "COMPOSE_PROFILES=cpu,lb"
    echo "OPENAI_BASE_URL="
    echo "GATEWAY_IMAGE=$GATEWAY_IMAGE"
    # A port chosen per replica (`127.0.0.1::8080`): podman's Docker API refuses port ranges.
    echo "GATEWAY_PORT=127.0.0.1:"
    echo "PROMETHEUS_PORT=127.0.0.1:${ports[0]}"
    echo "LB_PORT=127.0.0.1:${ports[1]}"
} >"$envfile"
compose=(docker-compose -p "$PROJECT" --env-file "$envfile" -f compose.yaml -f deploy/stack-test/compose.test.yaml)

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        log "FAILED (rc $rc); the last log lines of each container:"
        for c in $(podman ps -a --format '{{.Names}}' --filter "label=com.docker.compose.project=$PROJECT"); do
            echo "--- $c" >&2; podman logs --tail 15 "$c" 2>&1 | sed 's/^/    /' >&2 || true
        done
    fi
    "${compose[@]}" down -v --remove-orphans >"$work/down.log" 2>&1 || cat "$work/down.log" >&2
    [[ -n "$health_pid" ]] && kill "$health_pid" 2>/dev/null
    kill "$service_pid" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
for _ in $(seq 50); do [[ -S "$sock" ]] && break; sleep 0.2; done

run_health_checks() {
    while true; do
        for c in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
            podman healthcheck run "$c" >/dev/null 2>&1 || true
        done
        sleep 2
    done
}
run_health_checks &
health_pid=$!

wait_healthy() {
    local deadline=$((SECONDS + ${1:-300})) states
    while true; do
        states="$(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}={{.Status}}')"
        if [[ -n "$states" ]] && ! grep -qv '(healthy)' <<<"$states"; then return 0; fi
        if ((SECONDS > deadline)); then log "not healthy in time:"; echo "$states" >&2; return 1; fi
        sleep 2
    done
}

# Whatever an interrupted earlier run left behind.
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
log "up: compose.yaml + compose.test.yaml, profiles cpu and lb"
"${compose[@]}" up -d --no-build >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
wait_healthy 300
log "every service healthy: $(podman ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}' | tr '\n' ' ')"

gateway_port="$(podman port "$(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter label=com.docker.compose.service=gateway | head -1)" 8080/tcp | sed 's/.*://')"
export STACK_GATEWAY_URL="http://127.0.0.1:$gateway_port" STACK_LB_URL="http://127.0.0.1:${ports[1]}"
export STACK_PROMETHEUS_URL="http://127.0.0.1:${ports[0]}" STACK_PROJECT="$PROJECT"
export STACK_MASTER_KEY="$(sed -n 's/^GATEWAY_MASTER_KEY=//p' .env.example)"
export STACK_COMPOSE="${compose[*]}"

# -- 3. the checks --------------------------------------------------------------------------------------
"$PY" scripts/stack_check.py basic
"$PY" scripts/stack_check.py redis-restart
log "scale: two gateway replicas, virtual keys on (budgets are per key)"
"${compose[@]}" up -d --no-build --scale gateway=2 >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
wait_healthy 300
sleep 11 # nginx re-resolves the service name every 10 s (resolver valid=10s)
"$PY" scripts/stack_check.py scale

# -- 4. down -v leaves nothing --------------------------------------------------------------------------
log "down -v"
"${compose[@]}" down -v --remove-orphans >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; exit 1; }
left="$(podman ps -aq --filter "label=com.docker.compose.project=$PROJECT")"
left+="$(podman volume ls -q --filter "label=com.docker.compose.project=$PROJECT")"
left+="$(podman network ls -q --filter "label=com.docker.compose.project=$PROJECT")"
left+="$(podman volume ls -q | grep "^${PROJECT}_" || true)$(podman network ls --format '{{.Name}}' | grep "^${PROJECT}_" || true)"
[[ -z "$left" ]] || { log "left behind after down -v: $left"; exit 1; }
log "PASSED: down -v left no container, volume or network"
