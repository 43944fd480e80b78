"""Scaling out: gateway processes sharing one Redis and one PostgreSQL share the response cache and write one
ledger; ``gateway serve --workers 2`` runs two workers that each build their own app through the
``gateway.app:app_from_env`` factory and share the same state. (Budgets and rate limits across two
processes are proven by tests/accounting/test_replicas.py.)"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from gateway.simulator import create_simulator_app
from tests.accounting.conftest import REDIS_URL, database_url
from tests.helpers.processes import GatewayProcess
from tests.helpers.redis import delete_prefix, redis_answers
from tests.helpers.servers import run_asgi_server

MASTER = "sk-master-scale-out"
AUTH = {"authorization": f"Bearer {MASTER}"}


def pg_or_skip(tmp_path: Path) -> Any:
    try:
        return database_url("postgresql", tmp_path)
    except OSError as exc:  # pragma: no cover - the test machines run PostgreSQL
        pytest.skip(f"PostgreSQL unreachable: {exc}")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A private namespace in the shared Redis, deleted afterwards."""
    if not redis_answers(REDIS_URL):  # pragma: no cover - the test machines run Redis
        pytest.skip(f"Redis unreachable at {REDIS_URL}")
    value = f"gwtest:{uuid.uuid4().hex[:10]}:"
    yield value
    delete_prefix(REDIS_URL, value)


@pytest.fixture
def upstream() -> Iterator[str]:
    """A fast simulated backend (its /_sim/stats counts the requests that reached it)."""
    with run_asgi_server(create_simulator_app("fast", time_scale=0.2)) as url:
        yield url


def write_config(path: Path, upstream: str, db_url: str, prefix: str) -> Path:
    config = {
        "models": [
            {
                "name": "sim",
                "backend": "openai",
                "base_url": f"{upstream}/v1",
                "upstream_model": "sim-fast",
                "input_cost_per_token": "0.000001",
                "output_cost_per_token": "0.000002",
            }
        ],
        "retry": {"max_attempts": 1},
        "server": {"metrics_scrape_seconds": 3600},
        # a generous lookup timeout: this test is about sharing, and a loaded CI machine is slow
        "cache": {"redis_url": REDIS_URL, "key_prefix": f"{prefix}cache:", "timeout_ms": 3000},
        "auth": {"redis_prefix": f"{prefix}auth:"},
        "ledger": {"url": db_url, "flush_interval_seconds": 0.05},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def ask(question: str, *, stream: bool = False, temperature: float = 0) -> dict[str, Any]:
    return {
        "model": "sim",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 12,
        "temperature": temperature,
        "stream": stream,
    }


def cached_entries(prefix: str) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{prefix}cache:*"))
    finally:
        client.close()


def wait_for_entries(prefix: str, n: int) -> None:
    """Cache writes happen in the background after the answer: wait for them to land in Redis."""
    deadline = time.monotonic() + 10
    while cached_entries(prefix) < n:
        assert time.monotonic() < deadline, f"fewer than {n} cache entries in Redis"
        time.sleep(0.02)


def upstream_calls(upstream: str) -> int:
    stats = httpx.get(f"{upstream}/_sim/stats").json()
    return int(stats["requests_received"])


def content(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        parts = []
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                for choice in yaml.safe_load(line[6:]).get("choices") or []:
                    parts.append(choice.get("delta", {}).get("content") or "")
        return "".join(parts)
    return str(response.json()["choices"][0]["message"]["content"])


def ledger_rows(db_url: str) -> dict[str, str]:
    """request_id -> cache_status of every ledger row."""
    import asyncpg

    async def go() -> dict[str, str]:
        conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await conn.fetch("SELECT request_id, cache_status FROM gw_ledger")
        finally:
            await conn.close()
        return {r["request_id"]: r["cache_status"] for r in rows}

    return asyncio.run(go())


def worker_pids(gw: GatewayProcess) -> set[int]:
    """The worker processes of a ``--workers N`` gateway, once each has run its app's start-up."""
    deadline = time.monotonic() + 60
    while gw.log().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.1)
    workers = {int(p) for p in re.findall(r"Started server process \[(\d+)\]", gw.log())}
    for pid in workers:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert ppid == gw.proc.pid, "a worker is not a child of `gateway serve`"
        assert b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()  # spawned: it imported the factory
    return workers


async def burst(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Concurrent requests, each on a new connection (so the kernel spreads them over the workers)."""

    async def one(body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30, headers=AUTH) as client:
            return await client.post(f"{url}/v1/chat/completions", json=body)

    return list(await asyncio.gather(*(one(b) for b in bodies)))


def test_replicas_and_workers_share_the_cache_and_one_ledger(tmp_path: Path, prefix: str, upstream: str) -> None:
    """Replica A (one process) and replica B (``--workers 2``) on one Redis and one PostgreSQL."""
    with pg_or_skip(tmp_path) as db_url:
        config = write_config(tmp_path / "gateway.yaml", upstream, db_url, prefix)
        env = {"GATEWAY_MASTER_KEY": MASTER}  # auth on, admin reachable
        a = GatewayProcess(config, tmp_path / "a.log", env=env)
        b = GatewayProcess(config, tmp_path / "b.log", "--workers", "2", env=env)
        responses: list[httpx.Response] = []
        workers: set[int] = set()
        try:
            a.wait_ready()
            b.wait_ready(90)
            # B's two workers are separate processes, each with the app built by gateway.app:app_from_env
            workers = worker_pids(b)
            assert len(workers) == 2 and b.proc.pid not in workers, b.log()
            with httpx.Client(timeout=30, headers=AUTH) as client:

                def post(gw: GatewayProcess, body: dict[str, Any]) -> httpx.Response:
                    r = client.post(f"{gw.base_url}/v1/chat/completions", json=body)
                    assert r.status_code == 200, r.text
                    responses.append(r)
                    return r

                first = post(a, ask("What is the capital of France?"))
                assert first.headers["x-gateway-cache"] == "miss"
                wait_for_entries(prefix, 1)
                again = post(b, ask("What is the capital of France?"))  # the other replica
                assert again.headers["x-gateway-cache"] == "hit"
                assert content(again) == content(first)
                streamed = post(b, ask("What is the capital of France?", stream=True))
                assert streamed.headers["x-gateway-cache"] == "hit" and content(streamed) == content(first)

                other = post(b, ask("Name a prime number."))
                assert other.headers["x-gateway-cache"] == "miss"
                wait_for_entries(prefix, 2)
                assert post(a, ask("Name a prime number.")).headers["x-gateway-cache"] == "hit"

                sampled = [post(gw, ask("Tell me a joke.", temperature=0.8)) for gw in (a, b)]
                assert all(r.headers["x-gateway-cache"] != "hit" for r in sampled)  # not deterministic: never cached

            # B's workers: identical questions are hits whichever worker answers; new ones reach the upstream once
            batch = asyncio.run(
                burst(
                    b.base_url, [ask("What is the capital of France?")] * 16 + [ask(f"Count to {i}.") for i in range(6)]
                )
            )
            responses += batch
            assert all(r.status_code == 200 for r in batch)
            assert [r.headers["x-gateway-cache"] for r in batch[:16]] == ["hit"] * 16
            assert upstream_calls(upstream) == 2 + 2 + 6  # misses and sampled only: hits never left the gateways

            # one ledger: either replica's spend API sees every request, whichever process served it
            deadline = time.monotonic() + 10
            while True:
                spend = httpx.get(f"{a.base_url}/admin/spend?group_by=model", timeout=10, headers=AUTH).json()
                if spend["totals"]["requests"] == len(responses) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert spend["totals"]["requests"] == len(responses)
            assert spend["totals"]["cache_hits"] == 3 + 16
        finally:
            a.terminate()  # both at once
            codes = [a.stop(), b.stop()]
        assert all(c in (0, -signal.SIGTERM) for c in codes), a.log() + b.log()
        assert b.log().count("Application shutdown complete") == 2  # each worker flushed its own ledger rows
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
        rows = ledger_rows(db_url)
        assert rows == {r.headers["x-request-id"]: r.headers["x-gateway-cache"] for r in responses}
