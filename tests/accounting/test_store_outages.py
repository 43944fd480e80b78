"""Budgets and key lookups across outages of Redis and of the key database.

- An admission whose reply timed out (Redis stalled past the socket timeout) still ran when Redis caught up: its
  reservation held part of the key's budget for ``reservation_ttl_seconds`` (15 minutes) with nothing in flight,
  and the key was refused meanwhile. It is now found and released.
- Redis restarted without its data: the key's spend counter was set again from the spend cached with the key's
  record (up to ``key_cache_seconds`` old, or any age while the database was down), and the key spent its budget a
  second time. The counter is now set from the ledger read at that moment (or the request is refused: 503).
- While the key database was down, every request read it again (and logged a warning each) rather than use the
  cached record for another ``key_cache_seconds``; a database that never answers held requests without end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cache.base import StoreTimeout
from gateway.auth.limits import KeyLimits
from gateway.auth.redis_limits import RedisLimiter
from tests.accounting.conftest import REDIS_URL, auth_header, chat, gateway_client, make_settings
from tests.accounting.test_keys import new_key
from tests.helpers.proxy import TcpProxy
from tests.helpers.redis import RedisProcess


@pytest.fixture
async def paused_redis() -> AsyncIterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


async def test_a_timed_out_admission_leaves_no_reservation(paused_redis: RedisProcess) -> None:
    limiter = RedisLimiter(Redis.from_url(paused_redis.url, socket_timeout=0.3), prefix="t:")
    limits = KeyLimits(budget_nano=1000, tpm=100)
    check = Redis.from_url(paused_redis.url)
    try:
        # Redis stalls past the limiter's socket timeout: the admission's reply does not come in time, and Redis
        # runs its script after the sleep: 600 of the 1000 reserved, 50 tokens taken
        await limiter.admit("other", limits, reserve_nano=1, request_id="r0", spent_seed_nano=0)  # scripts loaded
        stall = asyncio.ensure_future(check.execute_command("DEBUG", "SLEEP", "1"))
        await asyncio.sleep(0.1)
        with pytest.raises(StoreTimeout):
            await limiter.admit("k", limits, reserve_nano=600, request_id="r1", spent_seed_nano=0, reserve_tokens=50)
        await stall
        for _ in range(100):
            if not await check.zcard("t:res:k"):
                break
            await asyncio.sleep(0.05)
        assert await check.zcard("t:res:k") == 0  # found and released
        again = await limiter.admit(
            "k", limits, reserve_nano=600, request_id="r2", spent_seed_nano=0, reserve_tokens=90
        )
        assert again.outcome == "ok"  # the whole budget, and the tokens given back
    finally:
        await check.aclose()
        await limiter.aclose()


async def test_a_counter_lost_with_redis_is_set_from_the_ledger_read_then(
    db_url: str, redis_prefix: str, master_key: str
) -> None:
    settings = make_settings(db_url, auth=True, redis_prefix=redis_prefix)
    async with gateway_client(settings) as (client, gw):
        k = await new_key(client, master_key, name="capped", budget_usd="0.0005")
        codes = []
        for _ in range(6):
            r = await client.post(
                "/v1/chat/completions", json=chat("hosted-a", "hi", max_tokens=10), headers=auth_header(k["key"])
            )
            codes.append(r.status_code)
            await asyncio.sleep(0.02)  # settled
        assert codes == [200] * 4 + [402] * 2  # as test_budget_stops_spending
        await gw.recorder.flush()  # type: ignore[attr-defined]
        redis = Redis.from_url(REDIS_URL)
        await redis.delete(f"{redis_prefix}spend:{k['id']}", f"{redis_prefix}res:{k['id']}")  # Redis restarted empty
        await redis.aclose()
        # the key's cached record still says it spent nothing (read at its first request, key_cache_seconds: 30)
        after = await client.post(
            "/v1/chat/completions", json=chat("hosted-a", "hi", max_tokens=10), headers=auth_header(k["key"])
        )
    assert after.status_code == 402, after.text
    assert "spent $0.00043" in after.json()["error"]["message"]


async def test_the_cached_key_record_stands_once_per_ttl_while_the_database_is_down(
    tmp_path: object, master_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pathlib import Path

    db = Path(str(tmp_path)) / "ledger.db"
    settings = make_settings(f"sqlite+aiosqlite:///{db}", auth=True)
    async with gateway_client(settings) as (client, gw):
        k = await new_key(client, master_key, name="k")
        cache = gw.admission.cache  # type: ignore[attr-defined]
        reads = 0
        real = cache.store.by_secret

        async def refused(secret: str) -> object:
            nonlocal reads
            reads += 1
            raise OSError("connection refused")

        r = await client.post("/v1/chat/completions", json=chat("hosted-a", "hi"), headers=auth_header(k["key"]))
        assert r.status_code == 200
        for entry in cache._entries.values():
            entry.expires = 0  # the record is due for a read
        cache.store.by_secret = refused
        with caplog.at_level(logging.WARNING, logger="gateway.auth"):
            codes = [
                (
                    await client.post(
                        "/v1/chat/completions", json=chat("hosted-a", f"q{i}"), headers=auth_header(k["key"])
                    )
                ).status_code
                for i in range(20)
            ]
        cache.store.by_secret = real
    assert codes == [200] * 20
    assert reads == 1  # not once per request
    assert len([r for r in caplog.records if "key database unreachable" in r.getMessage()]) == 1


async def test_a_key_lookup_gives_up_on_a_database_that_does_not_answer(tmp_path: object, master_key: str) -> None:
    from pathlib import Path

    db = Path(str(tmp_path)) / "ledger.db"
    settings = make_settings(f"sqlite+aiosqlite:///{db}", auth=True, ledger={"connect_timeout_seconds": 0.3})
    async with gateway_client(settings) as (client, gw):
        k = await new_key(client, master_key, name="k")
        cache = gw.admission.cache  # type: ignore[attr-defined]
        cache._entries.clear()

        async def silent(secret: str) -> object:
            await asyncio.sleep(3600)  # a partition: the connection is open and nothing answers
            raise AssertionError

        cache.store.by_secret = silent
        r = await asyncio.wait_for(
            client.post("/v1/chat/completions", json=chat("hosted-a", "hi"), headers=auth_header(k["key"])), 10
        )
    assert r.status_code == 503 and r.json()["error"]["code"] == "auth_store_unavailable"


async def test_a_shutdown_ends_while_the_database_does_not_answer(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A partition (connections open, nothing answers) while rows are queued: the shutdown gives up the write once
    it has made no progress for ``shutdown_flush_seconds`` (at least 5 s) and reports the rows; before, it waited
    for the database without end (an orchestrator then kills the process, and every queued row is lost unreported)."""
    with TcpProxy(5432) as proxy:
        url = pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
        settings = make_settings(url, ledger={"shutdown_flush_seconds": 0})
        with caplog.at_level(logging.ERROR, logger="gateway.accounting"):
            async with gateway_client(settings) as (client, _):
                proxy.freeze()
                r = await client.post("/v1/chat/completions", json=chat("hosted-a", "hi"))
                assert r.status_code == 200
                await asyncio.sleep(0.2)  # its row queued, and the writer holding it in a write that never ends
                started = time.monotonic()
            took = time.monotonic() - started
        proxy.thaw()
    assert took < 12, took
    assert any("rows unwritten" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
