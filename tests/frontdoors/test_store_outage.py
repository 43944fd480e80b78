"""The stored-response store's outage: after a failure its calls fail at once for a cool-down, so a store that
stopped answering (a hung Redis: it accepts connections and never replies) costs the Responses API one
timeout, not one per request.

What the client sees is what a store outage always gave: the answer is served and not stored; a
``previous_response_id`` lookup, a ``GET`` or a ``DELETE`` is a 503 ``response_store_unavailable``. Each
transition (failing, answering again) is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.accounting.db import Database
from gateway.config import settings_from_dict
from gateway.frontdoors.sql_store import SqlResponseStore
from gateway.frontdoors.store import RedisResponseStore, StoreUnavailable, build_response_store
from gateway.metrics import Metrics
from tests.frontdoors.conftest import MASTER, Env
from tests.helpers.proxy import TcpProxy, silent_server
from tests.helpers.redis import any_redis, delete_prefix
from tests.helpers.servers import serve_gateway

TIMEOUT_S = 2.0  # the Redis store's socket timeout
N = 6
STORE_LOG = "gateway.frontdoors.store"


def _settings(env: Env, tmp_path: Path, redis_url: str, retry_after_s: float) -> Any:
    return settings_from_dict(
        {
            "models": [
                {"name": "small", "backend": "openai", "base_url": env.sim_url + "/v1", "upstream_model": "meta/small"}
            ],
            "cache": {"enabled": False},
            "auth": {"enabled": True},  # the package's master key (env) is set
            "server": {"metrics_scrape_seconds": 3600},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", "flush_interval_seconds": 0.05},
            "responses": {"redis_url": redis_url, "retry_after_seconds": retry_after_s},
        }
    )


def _store_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == STORE_LOG and r.levelno >= logging.WARNING]


async def test_a_hung_redis_costs_one_timeout_not_one_per_request(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with silent_server() as port:
        settings = _settings(env, tmp_path, f"redis://127.0.0.1:{port}/0", retry_after_s=60)
        with serve_gateway(settings) as gw:
            async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=MASTER, max_retries=0) as c:
                started = time.monotonic()
                answers = [await c.responses.create(model="small", input=f"Hi {i}") for i in range(N)]
                async with c.responses.stream(model="small", input="And a stream?") as stream:
                    streamed = await stream.get_final_response()
                elapsed = time.monotonic() - started
                # answered, not stored: as during any store outage
                assert all(a.status == "completed" and a.output_text for a in [*answers, streamed])
                assert elapsed < TIMEOUT_S + 2.0, f"{N + 1} requests took {elapsed:.1f} s: a timeout each?"

                # reads fail at once with the outage's 503
                for call in (
                    c.responses.create(model="small", input="Again", previous_response_id=answers[0].id),
                    c.responses.retrieve(answers[0].id),
                    c.responses.delete(answers[0].id),
                ):
                    t = time.monotonic()
                    with pytest.raises(openai.InternalServerError) as info:
                        await call
                    assert time.monotonic() - t < 1.0
                    assert info.value.status_code == 503 and info.value.code == "response_store_unavailable"
                    assert str(port) not in info.value.message  # the address goes to the log only
    warnings = _store_warnings(caplog)
    assert len(warnings) == 1 and "unavailable" in warnings[0], warnings  # once, not once per request


@pytest.fixture
def proxied_redis() -> Iterator[tuple[TcpProxy, str]]:
    """A relay to a real Redis that the test can cut and restore, and the Redis URL through it."""
    with any_redis() as url, TcpProxy(urlsplit(url).port or 6379) as proxy:
        yield proxy, f"redis://127.0.0.1:{proxy.port}{urlsplit(url).path}"


async def test_the_store_is_tried_again_after_the_cool_down(
    proxied_redis: tuple[TcpProxy, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    proxy, url = proxied_redis
    prefix = f"gw:test-outage-{uuid.uuid4().hex[:8]}:"
    metrics = Metrics()
    cool_down = 0.5
    settings = settings_from_dict(
        {
            "models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}],
            "responses": {"redis_url": url, "redis_prefix": prefix, "retry_after_seconds": cool_down},
        }
    )
    store = build_response_store(settings, metrics=metrics)
    assert isinstance(store, RedisResponseStore)
    try:
        await store.put("t", "r1", {"n": 1})
        proxy.stop()  # Redis unreachable
        with pytest.raises(StoreUnavailable):
            await store.get("t", "r1")
        proxy.start()  # back, but the store is left alone for the cool-down
        with pytest.raises(StoreUnavailable) as info:
            await store.put("t", "r2", {"n": 2})
        assert info.value.status == 503 and info.value.code == "response_store_unavailable"
        await asyncio.sleep(cool_down + 0.1)
        assert await store.get("t", "r1") == {"n": 1}  # tried again, and it answers
        await store.put("t", "r2", {"n": 2})
        assert await store.get("t", "r2") == {"n": 2}
    finally:
        await store.aclose()
        delete_prefix(url, prefix)
    warnings = _store_warnings(caplog)
    assert len(warnings) == 2 and "unavailable" in warnings[0] and "again" in warnings[1], warnings
    errors = {s.labels["op"]: s.value for s in metrics.cache_errors.collect()[0].samples if s.name.endswith("_total")}
    assert errors == {"response_store": 1.0, "response_store_open": 1.0}, errors


async def test_the_database_store_fails_fast_too() -> None:
    """Without Redis the store is the ledger's database: one that stops answering costs one timeout too."""
    async with silent_server() as port:
        db = Database(create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/none"))
        try:
            store = SqlResponseStore(db, ttl_seconds=60, timeout_s=0.5, retry_after_s=60)
            started = time.monotonic()
            for i in range(N):
                with pytest.raises(StoreUnavailable):
                    await store.get("t", f"r{i}")
                with pytest.raises(StoreUnavailable):
                    await store.put("t", f"r{i}", {})
            assert time.monotonic() - started < 0.5 + 1.0
        finally:
            await db.aclose()


def test_only_the_probe_frees_the_probe() -> None:
    """A call admitted while the store was still closed, and cancelled (its client left) while another call is the
    half-open probe, must not free the probe: a second call would reach a store that just failed."""
    from gateway.frontdoors.store import StoreBreaker

    now = [0.0]
    breaker = StoreBreaker("test", retry_after_s=5.0, clock=lambda: now[0])
    early = breaker.call()
    early.__enter__()  # admitted while closed; still waiting on the store
    with pytest.raises(StoreUnavailable), breaker.call():
        raise StoreUnavailable("down")  # another call fails: open for 5 s
    now[0] = 6.0
    probe = breaker.call()
    probe.__enter__()  # the half-open probe
    cancelled = asyncio.CancelledError()
    assert not early.__exit__(asyncio.CancelledError, cancelled, None)  # the early call is cancelled (re-raised)
    with pytest.raises(StoreUnavailable), breaker.call():  # the probe is still out: this one fails at once
        pass
    probe.__exit__(None, None, None)  # the probe succeeds: closed
    with breaker.call():
        pass
