"""The monitor's budget while its Redis does not answer.

* One process (``server.workers`` 1, no ``gateway serve --workers N`` around it) goes on sampling against its own
  figure, its own calls raised to the ledger's (the behaviour before the budget moved to Redis: the cap holds for
  that process as it did); several processes keep refusing (no figure of theirs could hold the cap).
* ``GET /admin/quality`` reads the counter without side effects: a Redis that fails it shows null figures and does
  not stop this process's sampling (before, the admin read marked Redis down for 5 s, stopping samples).
* ``queued`` is still in ``/admin/quality``'s ``monitor`` object (a deprecated alias of ``process_queued``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from redis.asyncio import Redis

from gateway.config import Settings
from gateway.quality.spend import RECHECK_S, RedisDailySpend, build_daily_spend
from tests.helpers.ports import free_port
from tests.helpers.servers import serve_gateway
from tests.quality.conftest import MASTER, make_settings, quality, wait_judged


def _dead() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def _dead_store(budget: Decimal, *, single_process: bool) -> RedisDailySpend:
    client = Redis.from_url(_dead(), socket_timeout=1.0, socket_connect_timeout=1.0)
    alone = {"single_process": True} if single_process else {}  # the default: several processes
    return RedisDailySpend(budget, client, prefix="gwtest:none:", hold_s=60.0, **alone)


def _over_dead_redis(settings: Settings, workers: int) -> Settings:
    return settings.model_copy(
        update={
            "cache": settings.cache.model_copy(update={"redis_url": _dead()}),
            "server": settings.server.model_copy(update={"workers": workers}),
        }
    )


async def test_the_admin_read_leaves_sampling_alone(caplog: pytest.LogCaptureFixture) -> None:
    s = _dead_store(Decimal("0.05"), single_process=False)
    caplog.set_level(logging.INFO, "gateway.quality")
    try:
        assert s.blocked() is None
        assert await s.counted() is None  # null figures
        assert s.blocked() is None  # and the workers still try Redis for the next sample
    finally:
        await s.aclose()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_one_process_counts_on_its_own_while_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    s = _dead_store(Decimal("0.01"), single_process=True)
    caplog.set_level(logging.INFO, "gateway.quality")
    try:
        first = await s.reserve("sample", Decimal("0.005"))
        assert first is not None and s.blocked() is None and s.counts_locally()
        second = await s.reserve("sample", Decimal("0.005"))
        assert second is not None
        # the cap is held by the samples in flight: refused, but the spend is under it (a sample may wait)
        assert await s.reserve("sample", Decimal("0.001")) is None and s.blocked() is None
        await s.grow(first, Decimal("0.001"))
        await s.settle(first, Decimal("0.006"), Decimal("0.003"))
        await s.release(first)
        assert s.spent_usd == Decimal("0.003") and s.reserved_usd == Decimal("0.005")
        await s.sync(s.day, Decimal("0.0095"))  # the ledger's figure for the day (every process's rows)
        assert s.spent_usd == Decimal("0.0095")
        assert await s.reserve("sample", Decimal("0.0001")) is None
        await s.release(second)
        await s.sync(s.day, Decimal("0.01"))
        assert s.blocked() == "budget"
    finally:
        await s.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "on its own" in warnings[0], warnings


async def test_several_processes_refuse_while_redis_is_down() -> None:
    s = _dead_store(Decimal("0.01"), single_process=False)
    try:
        with pytest.raises(OSError):
            await s.reserve("sample", Decimal("0.001"))
        assert s.blocked() == "unavailable" and not s.counts_locally()
    finally:
        await s.aclose()


def test_the_store_knows_whether_this_is_the_only_process(
    sims: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    one = _over_dead_redis(make_settings(sims, tmp_path, quality={}), 1)
    store = build_daily_spend(one)
    assert isinstance(store, RedisDailySpend) and store.single_process
    assert not _redis_store(_over_dead_redis(one, 3)).single_process  # server.workers
    # gateway serve --workers N (N > 1) names a metrics directory in every worker's environment
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert not _redis_store(one).single_process


def _redis_store(settings: Settings) -> RedisDailySpend:
    store = build_daily_spend(settings)
    assert isinstance(store, RedisDailySpend)
    return store


async def _send(base_url: str, n: int) -> None:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=MASTER, max_retries=0)
    try:
        for i in range(n):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": f"plain question {i}"}], max_tokens=16
            )
            assert raw.http_response.status_code == 200
    finally:
        await client.close()


async def test_one_worker_samples_through_a_redis_outage(
    sims: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, a Redis outage stopped sampling (``dropped_budget_unavailable``) even in a gateway of one process."""
    cfg = _over_dead_redis(make_settings(sims, tmp_path, quality={"report_interval_seconds": 3600}), 1)
    caplog.set_level(logging.WARNING, "gateway.quality")
    with serve_gateway(cfg) as gw:
        monitor = gw.gateway.monitor
        assert monitor is not None
        await _send(gw.base_url, 4)
        await wait_judged(gw, 4)
        judged = monitor.samples.labels("judged")._value.get()
        unavailable = monitor.samples.labels("dropped_budget_unavailable")._value.get()
        body = await quality(gw)
    assert (judged, unavailable) == (4, 0)
    assert body["monitor"]["budget_store"] == "redis" and body["monitor"]["budget_counted_usd"] is None
    assert Decimal(body["monitor"]["spent_today_usd"]) > 0
    warnings = [r.getMessage() for r in caplog.records if "budget in Redis is unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "on its own" in warnings[0], warnings


async def test_admin_quality_over_a_dead_redis_leaves_sampling_alone(sims: dict[str, str], tmp_path: Path) -> None:
    """Several processes (sampling refused while Redis is down): once the store would ask Redis again, an
    ``/admin/quality`` that finds Redis dead shows null figures and does not stop the next sample's try."""
    cfg = _over_dead_redis(make_settings(sims, tmp_path, quality={"report_interval_seconds": 3600}), 2)
    with serve_gateway(cfg) as gw:
        monitor = gw.gateway.monitor
        assert monitor is not None
        spend = monitor.spend
        assert isinstance(spend, RedisDailySpend)
        # The start-up's ledger syncs (the start's and the gauges' first) found Redis dead, within milliseconds (a
        # closed port): once they are over, the store's clock is moved past its recheck.
        await asyncio.sleep(0.5)
        spend._monotonic = lambda: time.monotonic() + 2 * RECHECK_S
        assert spend.blocked() is None
        body = await quality(gw)
        assert spend.blocked() is None, "the admin read stopped sampling"
    status = body["monitor"]
    assert status["budget_counted_usd"] is None and status["budget_reserved_usd"] is None
    assert status["queued"] == status["process_queued"] == 0  # the old name, kept
    assert status["process_in_progress"] == 0


async def test_queued_is_kept(sims: dict[str, str], tmp_path: Path) -> None:
    with serve_gateway(make_settings(sims, tmp_path, quality={"report_interval_seconds": 3600})) as gw:
        monitor = gw.gateway.monitor
        assert monitor is not None
        await asyncio.sleep(0)
        status = (await quality(gw))["monitor"]
    assert status["queued"] == status["process_queued"] == monitor.queue.qsize()
