"""The checks of scripts/stack-test.sh, run against the compose stack it brought up.

Every request goes through a gateway container (its published loopback port, or nginx's) with the
``openai`` SDK; Redis and PostgreSQL are read inside their containers (``podman exec``), Prometheus through
its query API. ``python scripts/stack_check.py basic|redis-restart|scale`` with the stack's ports and
compose command in the environment (STACK_GATEWAY_URL, STACK_LB_URL, STACK_PROMETHEUS_URL,
STACK_MASTER_KEY, STACK_PROJECT, STACK_COMPOSE).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import openai


def log(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[stack-check] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def env(name: str) -> str:
    """A required setting from the environment."""
    value = os.environ.get(name)
    if not value:
        sys.exit(f"stack_check: {name} is not set")
    return value


def run(cmd: list[str]) -> str:
    """Run a command, fail loudly, return its stdout."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def containers(service: str) -> list[str]:
    """Running container names of one compose service."""
    out = run(
        [
            "podman", "ps", "--format", "{{.Names}}",
            "--filter", f"label=com.docker.compose.project={env('STACK_PROJECT')}",
            "--filter", f"label=com.docker.compose.service={service}",
        ]
    )  # fmt: skip
    return sorted(out.split())


def one(service: str) -> str:
    """The single container of a service."""
    names = containers(service)
    if len(names) != 1:
        raise AssertionError(f"expected one {service} container, found {names}")
    return names[0]


def psql(sql: str) -> str:
    """A query in the PostgreSQL container, unaligned output."""
    return run(["podman", "exec", one("postgres"), "psql", "-U", "gateway", "-d", "gateway", "-At", "-c", sql]).strip()


def redis_cli(*args: str) -> str:
    """A command in the Redis container."""
    return run(["podman", "exec", one("redis"), "redis-cli", *args]).strip()


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 90.0) -> None:
    """Poll until probe() holds."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1.0)


def client(base: str, key: str) -> openai.OpenAI:
    """An SDK client on a gateway URL (no retries: a failed request must show)."""
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def http_json(url: str, key: str | None = None, data: dict[str, Any] | None = None) -> Any:
    """GET (or POST data) a JSON document."""
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    body = None if data is None else json.dumps(data).encode()
    with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=30) as resp:
        return json.loads(resp.read())


def ledger_count(where: str = "true") -> int:
    """Ledger rows matching a condition."""
    return int(psql(f"SELECT count(*) FROM gw_ledger WHERE {where}"))


def create_key(base: str, name: str, budget: float | None = None) -> str:
    """A virtual key through the admin API."""
    body: dict[str, Any] = {"name": name}
    if budget is not None:
        body["budget_usd"] = budget
    created = http_json(f"{base}/admin/keys", env("STACK_MASTER_KEY"), body)
    return str(created["key"])


def prometheus(query: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    url = f"{env('STACK_PROMETHEUS_URL')}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    doc = http_json(url)
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def basic() -> None:
    """Chat and streaming on model auto, a Redis cache hit, ledger rows, Prometheus, the dashboard.

    The cache answers deterministic requests only (cache.only_deterministic): temperature 0 there.
    """
    base = env("STACK_GATEWAY_URL")
    # A configured master key turns keys on (.env.example sets one); the master key itself has no limits.
    api = client(base, env("STACK_MASTER_KEY"))
    tag = uuid.uuid4().hex[:8]
    user = f"stack-{tag}"
    messages: list[Any] = [{"role": "user", "content": f"Name three colours ({tag})."}]

    raw = api.chat.completions.with_raw_response.create(
        model="auto", messages=messages, max_tokens=32, temperature=0, user=user
    )
    first = raw.parse()
    assert first.choices[0].message.content, first
    log(f"chat: model={raw.headers.get('x-gateway-model')} cache={raw.headers.get('x-gateway-cache')}")

    parts: list[str] = []
    with api.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": f"Count to five ({tag})."}],
        max_tokens=32,
        stream=True,
        user=user,
    ) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
    assert parts, "the stream carried no content"
    log(f"stream: {len(parts)} chunks")

    hit = api.chat.completions.with_raw_response.create(
        model="auto", messages=messages, max_tokens=32, temperature=0, user=user
    )
    assert hit.headers.get("x-gateway-cache") == "hit", dict(hit.headers)
    assert hit.parse().choices[0].message.content == first.choices[0].message.content
    assert int(redis_cli("DBSIZE")) > 0, "nothing stored in the Redis container"
    # The hit came from the Redis container: emptied, the same request misses.
    redis_cli("FLUSHALL")
    miss = api.chat.completions.with_raw_response.create(
        model="auto", messages=messages, max_tokens=32, temperature=0, user=user
    )
    assert miss.headers.get("x-gateway-cache") != "hit", dict(miss.headers)
    log("cache: hit served from Redis, miss once Redis was emptied")

    where = f"\"user\" = '{user}'"
    wait_for("4 ledger rows", lambda: ledger_count(where) >= 4)
    rows = psql(f"SELECT stream, cache_status, status_code, requested_model FROM gw_ledger WHERE {where} ORDER BY id")
    lines = rows.splitlines()
    assert len(lines) == 4, lines
    assert [ln.split("|")[0] for ln in lines].count("t") == 1, lines
    assert [ln.split("|")[1] for ln in lines].count("hit") == 1, lines
    assert all(ln.split("|")[2] == "200" and ln.split("|")[3] == "auto" for ln in lines), lines
    log(f"ledger: {len(lines)} rows in the PostgreSQL container for 4 requests")

    wait_for(
        "the gateway's requests in Prometheus",
        lambda: sum(float(r["value"][1]) for r in prometheus("sum(gateway_requests_total)")) >= 4,
    )
    up = prometheus('up{job="gateway"}')
    assert up and all(r["value"][1] == "1" for r in up), up
    log("prometheus: gateway_requests_total scraped from the gateway container")

    with urllib.request.urlopen(f"{base}/dashboard", timeout=30) as resp:
        page = resp.read().decode()
    assert resp.status == 200 and "<html" in page.lower()
    data = http_json(f"{base}/admin/dashboard/data", env("STACK_MASTER_KEY"))
    assert data, data
    log("dashboard: page and its data (master key) served")


def redis_restart() -> None:
    """Requests keep succeeding while the Redis container restarts."""
    base = env("STACK_GATEWAY_URL")
    api = client(base, env("STACK_MASTER_KEY"))  # no limits, so admission never waits on Redis
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                api.chat.completions.create(
                    model="auto",
                    messages=[{"role": "user", "content": f"load {worker} {n} {uuid.uuid4()}"}],
                    max_tokens=8,
                )
                done[0] += 1
            except openai.OpenAIError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    before = done[0]
    run([*shlex.split(env("STACK_COMPOSE")), "restart", "redis"])
    log("redis restarted")
    wait_for("redis healthy", lambda: redis_cli("PING") == "PONG", timeout=60)
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    log(f"load: {done[0]} requests ({done[0] - before} from the restart on), {len(failures)} failed")
    assert not failures, failures[:5]
    assert done[0] > before, "no request completed after the restart"


def replica_requests(name: str) -> float:
    """gateway_requests_total summed, read from one replica's own /metrics."""
    script = (
        "import urllib.request\n"
        "t = urllib.request.urlopen('http://127.0.0.1:8080/metrics', timeout=10).read().decode()\n"
        "print(sum(float(l.split()[-1]) for l in t.splitlines() if l.startswith('gateway_requests_total{')))"
    )
    return float(run(["podman", "exec", name, "python", "-c", script]).strip())


def scale() -> None:
    """Two replicas behind nginx: both serve, one ledger, one budget (virtual keys on for this phase)."""
    lb = env("STACK_LB_URL")
    replicas = containers("gateway")
    assert len(replicas) == 2, replicas
    before = {name: replica_requests(name) for name in replicas}
    rows_before = ledger_count()
    api = client(lb, create_key(lb, "stack-scale"))
    n = 16
    for i in range(n):
        api.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": f"scale {i} {uuid.uuid4()}"}], max_tokens=8
        )
    served = {name: replica_requests(name) - before[name] for name in replicas}
    log(f"scale: requests per replica {served}")
    assert all(v > 0 for v in served.values()), served
    wait_for(f"{n} new ledger rows", lambda: ledger_count() >= rows_before + n)
    assert ledger_count() == rows_before + n, (ledger_count(), rows_before, n)
    log(f"scale: {n} requests, {n} rows in the one ledger")

    # One budget: a key worth a few GPT-4 answers, spent through both replicas, refuses once in total.
    budget = 0.01
    api = client(lb, create_key(lb, "stack-budget", budget=budget))
    accepted = refused = 0
    for i in range(24):
        try:
            api.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": f"budget {i} {uuid.uuid4()}"}], max_tokens=16
            )
            accepted += 1
        except openai.APIStatusError as exc:
            assert exc.status_code == 402, exc
            refused += 1
    key_id = psql("SELECT id FROM gw_api_keys WHERE name = 'stack-budget' ORDER BY created_at DESC LIMIT 1")
    wait_for("the budget key's ledger rows", lambda: ledger_count(f"key_id = '{key_id}'") >= accepted)
    spent = float(
        psql(f"SELECT coalesce(sum(cost_usd), 0) FROM gw_ledger WHERE key_id = '{key_id}' AND status_code = 200")
    )
    per_request = spent / max(accepted, 1)
    log(f"budget: {accepted} accepted, {refused} refused, ${spent:.6f} of ${budget} (${per_request:.6f} each)")
    assert refused > 0 and accepted > 0, (accepted, refused)
    assert spent <= budget + per_request, (spent, budget)


def main() -> None:
    """Run one phase by name."""
    phases = {"basic": basic, "redis-restart": redis_restart, "scale": scale}
    if len(sys.argv) != 2 or sys.argv[1] not in phases:
        sys.exit(f"usage: stack_check.py {{{'|'.join(phases)}}}")
    phases[sys.argv[1]]()


if __name__ == "__main__":
    main()
