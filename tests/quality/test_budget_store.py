"""The monitor's daily budget in Redis (:class:`gateway.quality.spend.RedisDailySpend`) against the machine's Redis:
several stores stand for several processes, reserving and settling concurrently; and a Redis that does not answer
stops sampling without touching client traffic."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
import redis
from redis.asyncio import Redis

from gateway.quality.spend import DAY_TTL_S, RECHECK_S, RedisDailySpend, to_pico, utc_day
from tests.helpers.ports import free_port
from tests.helpers.redis import SYSTEM_REDIS, delete_prefix, redis_answers
from tests.helpers.servers import serve_gateway
from tests.quality.conftest import MASTER, make_settings, quality

BUDGET = Decimal("0.05")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A private namespace in the machine's Redis (skips without one), deleted afterwards."""
    if not redis_answers(SYSTEM_REDIS):
        pytest.skip("no Redis at 127.0.0.1:6379")
    value = f"gwtest:qspend:{uuid.uuid4().hex[:8]}:"
    yield value
    delete_prefix(SYSTEM_REDIS, value)


def store(prefix: str, budget: Decimal = BUDGET, url: str = SYSTEM_REDIS, hold_s: float = 60.0) -> RedisDailySpend:
    # generous: 32 workers connect at once, on a 2-core machine that CI shares (1 s timed out once under load)
    client = Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    return RedisDailySpend(budget, client, prefix=prefix, hold_s=hold_s)


async def test_processes_sharing_redis_overshoot_by_at_most_one_sample(prefix: str) -> None:
    """Four stores (four processes) with eight judging workers each, samples whose calls cost up to their bounds:
    the day ends under budget + the largest sample, the counter holds exactly what was settled, and nothing stays
    reserved. (Each process on its own total spent up to four budgets, plus what each had in flight.)"""
    rng = random.Random(7)
    stores = [store(prefix) for _ in range(4)]
    settled: list[Decimal] = []
    sample_costs: list[Decimal] = []
    calls = [Decimal("0.0011"), Decimal("0.0023"), Decimal("0.0023")]  # a reference and two verdicts' bounds

    async def worker(s: RedisDailySpend) -> None:
        while True:
            held = await s.reserve("sample", sum(calls, Decimal(0)))
            if held is None:
                return
            cost = Decimal(0)
            for bound in calls:
                await asyncio.sleep(rng.random() * 0.005)
                actual = (bound * Decimal(rng.randint(50, 100)) / 100).quantize(Decimal("1e-12"))
                await s.settle(held, bound, actual)
                settled.append(actual)
                cost += actual
            sample_costs.append(cost)
            await s.release(held)

    try:
        await asyncio.gather(*(worker(s) for s in stores for _ in range(8)))
        spent, reserved = await stores[0].counted() or (None, None)
    finally:
        for s in stores:
            await s.aclose()
    total = sum(settled, Decimal(0))
    assert spent == total and reserved == 0
    assert total < BUDGET + max(sample_costs) and len(sample_costs) >= 5, (total, len(sample_costs))
    client = redis.Redis.from_url(SYSTEM_REDIS)
    try:
        key = f"{prefix}spend:{utc_day(time.time())}"
        assert 0 < client.ttl(key) <= DAY_TTL_S  # old days expire
        assert client.get(key) == str(to_pico(total)).encode()
    finally:
        client.close()


async def test_settling_twice_counts_once_and_the_ledger_raises_the_counter(prefix: str) -> None:
    """redis-py's retry may run a script twice (a reply lost): the second run of a settle counts nothing. A
    reservation grows past the budget when a call needs it (the sample was admitted). A figure from the ledger
    above the counter (a settle lost while Redis was down) raises it; one below never lowers it."""
    s = store(prefix, budget=Decimal("0.012"))
    try:
        held = await s.reserve("sample", Decimal("0.01"))
        assert held is not None
        await s.settle(held, Decimal("0.004"), Decimal("0.003"))
        settle_id = f"{held.name}:s{held.settles}"
        args = [held.name, settle_id, to_pico(Decimal("0.004")), to_pico(Decimal("0.003")), 60_000, 0, DAY_TTL_S]
        await s._settle(keys=s._keys(held.day), args=args)  # the retry of the same settle
        assert await s.counted() == (Decimal("0.003"), Decimal("0.006"))
        await s.grow(held, Decimal("0.005"))  # 0.003 + 0.011 > 0.012: grown all the same
        assert await s.counted() == (Decimal("0.003"), Decimal("0.011"))
        # refused: the rest is held by a sample in flight; the spend itself is under the budget, so a sample may wait
        assert await s.reserve("another", Decimal("0.0001")) is None and s.blocked() is None
        await s.settle(held, Decimal("0.005"), Decimal("0.005"))
        assert await s.counted() == (Decimal("0.008"), Decimal("0.006"))
        await s.sync(s.day, Decimal("0.0095"))
        assert s.spent_usd == Decimal("0.0095")
        await s.sync(s.day, Decimal("0.001"))
        await s.release(held)
        assert await s.counted() == (Decimal("0.0095"), Decimal(0))
        await s.sync(s.day, Decimal("0.012"))  # spent: sampling stops until the next day
        assert s.blocked() == "budget" and await s.reserve("another", Decimal("0.0001")) is None
    finally:
        await s.aclose()


async def test_a_reservation_of_a_process_that_died_expires(prefix: str) -> None:
    s = store(prefix, budget=Decimal("0.01"), hold_s=0.3)
    try:
        assert await s.reserve("dead", Decimal("0.01")) is not None  # never settled nor released
        assert await s.reserve("next", Decimal("0.001")) is None  # held by the dead one
        await asyncio.sleep(0.4)
        assert await s.reserve("next", Decimal("0.001")) is not None
    finally:
        await s.aclose()


async def test_an_unreachable_redis_blocks_sampling_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    s = store("gwtest:none:", url=f"redis://127.0.0.1:{free_port()}/0")
    caplog.set_level(logging.INFO, "gateway.quality")
    try:
        assert s.blocked() is None
        for _ in range(3):
            with pytest.raises(OSError):
                await s.reserve("sample", Decimal("0.001"))
        assert s.blocked() == "unavailable"
        await s.sync(s.day, Decimal("0.002"))  # quietly fails too
    finally:
        await s.aclose()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "client traffic is not affected" in warnings[0].getMessage()
    assert RECHECK_S > 0


async def test_a_redis_outage_changes_nothing_for_traffic(
    sims: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The monitor's budget in a Redis that does not answer (the cache's, which fails open too), with several
    processes (``server.workers``: one process counts on its own instead, test_budget_outage.py): every request is
    answered as fast as without the monitor, no sample starts (counted ``dropped_budget_unavailable``), one
    warning is logged, and ``/admin/quality`` still answers, without the counter's figures."""
    cfg = make_settings(sims, tmp_path, quality={"report_interval_seconds": 3600})
    dead = f"redis://127.0.0.1:{free_port()}/0"
    cfg = cfg.model_copy(
        update={
            "cache": cfg.cache.model_copy(update={"redis_url": dead}),
            "server": cfg.server.model_copy(update={"workers": 2}),
        }
    )
    caplog.set_level(logging.WARNING, "gateway.quality")
    with serve_gateway(cfg) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=MASTER, max_retries=0)
        took = []
        for i in range(6):
            t0 = time.perf_counter()
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": f"plain question {i}"}], max_tokens=16
            )
            took.append(time.perf_counter() - t0)
            assert raw.http_response.status_code == 200
            await asyncio.sleep(0.05)
        monitor = gw.gateway.monitor
        assert monitor is not None
        for _ in range(200):
            if monitor.samples.labels("dropped_budget_unavailable")._value.get() == 6:
                break
            await asyncio.sleep(0.02)
        body = await quality(gw)
        judged = monitor.samples.labels("judged")._value.get()
        unavailable = monitor.samples.labels("dropped_budget_unavailable")._value.get()
        await client.close()
        async with httpx.AsyncClient(base_url=gw.base_url) as http:
            metrics = (await http.get("/metrics")).text
    assert judged == 0 and unavailable == 6
    assert 'gateway_quality_samples_total{outcome="dropped_budget_unavailable"} 6.0' in metrics
    assert max(took) < 10.0  # as test_a_dead_judge_or_reference_changes_nothing_for_traffic: a loaded machine
    warnings = [r.getMessage() for r in caplog.records if "budget in Redis is unavailable" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert body["monitor"]["budget_store"] == "redis" and body["monitor"]["budget_counted_usd"] is None
    assert body["monitor"]["spent_today_usd"] == "0.000000000000"
