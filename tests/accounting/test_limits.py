"""The Redis (Lua) and in-process limiters have the same semantics, under concurrency too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from gateway.auth.limits import KeyLimits, Limiter, MemoryLimiter, from_nano, to_nano
from gateway.auth.redis_limits import RedisLimiter
from tests.accounting.conftest import REDIS_URL


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Limiter]:
    lim: Limiter
    if request.param == "memory":
        lim = MemoryLimiter()
    else:
        lim = RedisLimiter(Redis.from_url(REDIS_URL), prefix=redis_prefix)
    yield lim
    await lim.aclose()


def test_nano_rounding() -> None:
    assert to_nano(Decimal("0.000000000001")) == 1  # charges round up
    assert to_nano(Decimal("0.000108641966")) == 108642
    assert from_nano(108642) == Decimal("0.000108642")


async def test_concurrent_reservations_never_exceed_the_budget(limiter: Limiter) -> None:
    limits = KeyLimits(budget_nano=1000)
    verdicts = await asyncio.gather(
        *(limiter.admit("k", limits, reserve_nano=100, request_id=f"r{i}", spent_seed_nano=0) for i in range(50))
    )
    admitted = [v.reservation for v in verdicts if v.outcome == "ok"]
    assert len(admitted) == 10
    assert {v.outcome for v in verdicts} == {"ok", "budget"}
    for r in admitted:  # each cost less than it reserved
        assert r is not None
        await limiter.settle(r, cost_nano=60, tokens=0)
    assert await limiter.spent_nano("k") == 600
    more = await asyncio.gather(
        *(limiter.admit("k", limits, reserve_nano=100, request_id=f"s{i}", spent_seed_nano=0) for i in range(10))
    )
    assert [v.outcome for v in more].count("ok") == 4  # 600 spent + 4 x 100 reserved = the budget
    refused = next(v for v in more if v.outcome == "budget")
    assert (refused.spent_nano, refused.reserved_nano) == (600, 400)


async def test_seed_revocation_and_rate_limits(limiter: Limiter) -> None:
    # the spend already in the ledger seeds the counter the first time a key is seen
    v = await limiter.admit("seeded", KeyLimits(budget_nano=500), reserve_nano=100, request_id="a", spent_seed_nano=450)
    assert v.outcome == "budget" and v.spent_nano == 450

    rpm = KeyLimits(rpm=2)
    outcomes = [(await limiter.admit("r", rpm, reserve_nano=0, request_id=str(i), spent_seed_nano=0)) for i in range(3)]
    assert [o.outcome for o in outcomes] == ["ok", "ok", "rpm"]
    assert 1 <= outcomes[2].retry_after_s <= 30  # one request refills in 60/2 s

    tpm = KeyLimits(tpm=100)
    first = await limiter.admit("t", tpm, reserve_nano=0, request_id="1", spent_seed_nano=0)
    assert first.outcome == "ok" and first.reservation is not None
    await limiter.settle(first.reservation, cost_nano=0, tokens=130)  # into debt
    debt = await limiter.admit("t", tpm, reserve_nano=0, request_id="2", spent_seed_nano=0)
    assert debt.outcome == "tpm" and debt.retry_after_s >= 18  # 30 tokens of debt at 100/60 per s

    await limiter.revoke("r")
    assert (await limiter.admit("r", KeyLimits(), reserve_nano=0, request_id="x", spent_seed_nano=0)).outcome == (
        "revoked"
    )


async def test_the_ledger_s_higher_spend_is_taken_up(limiter: Limiter) -> None:
    """Spend the limiter never saw (a settle lost while Redis was unreachable, requests admitted under
    auth.fail_open, another process without Redis) is taken up from the ledger's figure when it is higher; a lower
    one (rows not written yet) changes nothing. Before, the ledger seeded a key once, and lost spend stayed lost."""
    limits = KeyLimits(budget_nano=1000)
    first = await limiter.admit("k", limits, reserve_nano=100, request_id="a", spent_seed_nano=0)
    assert first.reservation is not None
    await limiter.settle(first.reservation, cost_nano=300, tokens=0)
    behind = await limiter.admit("k", limits, reserve_nano=100, request_id="b", spent_seed_nano=200)
    assert behind.outcome == "ok" and await limiter.spent_nano("k") == 300
    ahead = await limiter.admit("k", limits, reserve_nano=100, request_id="c", spent_seed_nano=950)
    assert ahead.outcome == "budget" and ahead.spent_nano == 950


async def test_a_settle_run_twice_charges_once(redis_prefix: str) -> None:
    """A settle whose reply was lost (a Redis stall past the socket timeout) may run again: it charges once."""
    limiter = RedisLimiter(Redis.from_url(REDIS_URL), prefix=redis_prefix)
    try:
        v = await limiter.admit("k", KeyLimits(tpm=1000), reserve_nano=100, request_id="a", spent_seed_nano=0)
        assert v.reservation is not None
        for _ in range(2):
            await limiter.settle(v.reservation, cost_nano=1000, tokens=10)
        assert await limiter.spent_nano("k") == 1000
        level = await limiter.client.hget(f"{redis_prefix}rate:k", "t")
        assert 985 <= float(level) <= 991  # 10 tokens taken once (a second of refill at most)
    finally:
        await limiter.aclose()


async def test_a_token_debt_outlives_an_hour(redis_prefix: str) -> None:
    """One huge request on a small TPM: its debt takes two hours to repay, and the bucket is kept that long (it
    expired after an hour, and a missing bucket is a full one)."""
    limiter = RedisLimiter(Redis.from_url(REDIS_URL), prefix=redis_prefix)
    try:
        v = await limiter.admit("k", KeyLimits(tpm=1000), reserve_nano=0, request_id="a", spent_seed_nano=0)
        assert v.reservation is not None
        await limiter.settle(v.reservation, cost_nano=0, tokens=121_000)
        assert await limiter.client.ttl(f"{redis_prefix}rate:k") >= 7200
    finally:
        await limiter.aclose()


async def test_concurrent_requests_cannot_all_pass_on_one_buckets_tokens(limiter: Limiter) -> None:
    """Each request takes its estimated tokens at admission (at most the whole bucket is needed) and gets back what
    it did not use at settle. Before, every request was admitted while the bucket was not empty: ten concurrent
    requests of ~2,000 tokens all passed a 100-token bucket."""
    limits = KeyLimits(tpm=100)
    verdicts = await asyncio.gather(
        *(
            limiter.admit("k", limits, reserve_nano=0, request_id=f"r{i}", spent_seed_nano=0, reserve_tokens=60)
            for i in range(10)
        )
    )
    admitted = [v.reservation for v in verdicts if v.outcome == "ok"]
    assert len(admitted) == 1 and admitted[0] is not None and admitted[0].reserve_tokens == 60
    refused = [v for v in verdicts if v.outcome == "tpm"]
    assert len(refused) == 9 and all(11 <= v.retry_after_s <= 12 for v in refused)  # 20 more tokens at 100/60 a second
    await limiter.settle(admitted[0], cost_nano=0, tokens=10)  # used 10 of its 60: 50 come back
    again = await limiter.admit("k", limits, reserve_nano=0, request_id="s", spent_seed_nano=0, reserve_tokens=60)
    assert again.outcome == "ok"  # 90 left

    # larger than the whole bucket: admitted on a full one, then the bucket is in debt until settle says otherwise
    big = await limiter.admit("b", limits, reserve_nano=0, request_id="b1", spent_seed_nano=0, reserve_tokens=2_000)
    assert big.outcome == "ok" and big.reservation is not None
    after = await limiter.admit("b", limits, reserve_nano=0, request_id="b2", spent_seed_nano=0, reserve_tokens=1)
    assert after.outcome == "tpm" and after.retry_after_s >= 1_000  # 1,900 tokens of debt
    await limiter.settle(big.reservation, cost_nano=0, tokens=0)  # failed: it used nothing, all comes back
    back = await limiter.admit("b", limits, reserve_nano=0, request_id="b3", spent_seed_nano=0, reserve_tokens=1)
    assert back.outcome == "ok"
