"""Reservations of the monitor's budget in Redis (:class:`gateway.quality.spend.RedisDailySpend`) when a call to Redis
does not end as planned: it fails before Redis runs it, it is cancelled (the sample's timeout, shutdown), its reply
is lost after Redis ran it, or redis-py runs it twice (its retry after a lost reply). Whatever happened, the
sample's release removes what it holds (a reservation has one stable name in Redis), and a settle counts its cost
once. Before, a grow or settle renamed the reservation locally before Redis confirmed it: a call that failed or was
cancelled left Redis holding an entry that the release did not remove, the worst case held for timeout_seconds +
60 s (other samples waited or dropped); and a settle retried after the reservation expired counted twice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from cache.base import StoreTimeout, StoreUnavailable
from gateway.quality.spend import RedisDailySpend, to_pico
from tests.quality.test_budget_store import prefix, store  # noqa: F401  (prefix: the fixture)

Run = Callable[..., Awaitable[list[Any]]]


def _patch(s: RedisDailySpend, what: str, how: str) -> None:
    """Make the store's next ``what`` call to Redis (``reserve``, ``grow``, ``settle``, ``release``) end as ``how``:
    ``fails before`` (a connection error before Redis runs it), ``cancelled before``, ``reply lost`` (Redis runs
    it, the client times out), ``cancelled after`` (Redis runs it, the caller is cancelled) or ``twice`` (redis-py's
    retry runs it again with the same arguments)."""
    real: Run = s._run

    async def run(script: Any, day: str, args: list[Any], label: str) -> list[Any]:
        if label != what:
            return await real(script, day, args, label)
        s._run = real  # type: ignore[method-assign]  # once
        if how == "fails before":
            raise StoreUnavailable("Connection reset by peer")
        if how == "cancelled before":
            raise asyncio.CancelledError()
        await real(script, day, args, label)
        if how == "reply lost":
            raise StoreTimeout("Timeout reading from socket")
        if how == "cancelled after":
            raise asyncio.CancelledError()
        assert how == "twice"
        return await real(script, day, args, label)

    s._run = run  # type: ignore[method-assign]


async def _figures(s: RedisDailySpend) -> tuple[Decimal, Decimal] | None:
    """What Redis holds now: (spent, reserved)."""
    return await s.counted()


@pytest.fixture
def one(prefix: str) -> Iterator[RedisDailySpend]:  # noqa: F811
    yield store(prefix, budget=Decimal("0.05"))


@pytest.mark.parametrize("step", ["grow", "settle"])
@pytest.mark.parametrize("how", ["fails before", "cancelled before", "reply lost", "cancelled after"])
async def test_the_release_removes_the_reservation_whatever_its_last_call_did(
    one: RedisDailySpend, step: str, how: str
) -> None:
    s = one
    try:
        held = await s.reserve("sample", Decimal("0.01"))
        assert held is not None
        _patch(s, step, how)
        if step == "grow":
            call = s.grow(held, Decimal("0.005"))
        else:
            call = s.settle(held, Decimal("0.004"), Decimal("0.003"))
        if "cancelled" in how:
            with pytest.raises(asyncio.CancelledError):
                await call
        else:
            await call  # the sample goes on: a failed grow or settle is not its failure
        await s.release(held)
        figures = await _figures(s)
        assert figures is not None and figures[1] == 0, f"still reserved after the release: {figures}"
        ran = how in ("reply lost", "cancelled after") and step == "settle"
        assert figures[0] == (Decimal("0.003") if ran else 0)
    finally:
        await s.aclose()


async def test_a_settle_retried_after_its_reservation_expired_counts_once(prefix: str) -> None:  # noqa: F811
    s = store(prefix, budget=Decimal("0.05"), hold_s=0.2)
    try:
        held = await s.reserve("sample", Decimal("0.01"))
        assert held is not None
        await asyncio.sleep(0.3)  # the sample outlived its hold (a paused process): Redis dropped the reservation
        _patch(s, "settle", "twice")
        await s.settle(held, Decimal("0.004"), Decimal("0.003"))
        assert await _figures(s) == (Decimal("0.003"), Decimal(0))
        await s.settle(held, Decimal("0.004"), Decimal("0.002"))  # the next call's settle counts (another one)
        assert await _figures(s) == (Decimal("0.005"), Decimal(0))
        await s.release(held)
    finally:
        await s.aclose()


async def test_a_settle_whose_reply_was_lost_is_not_confused_with_the_next(one: RedisDailySpend) -> None:
    s = one
    try:
        held = await s.reserve("sample", Decimal("0.01"))
        assert held is not None
        _patch(s, "settle", "reply lost")
        await s.settle(held, Decimal("0.004"), Decimal("0.003"))  # ran in Redis, the reply lost
        await s.settle(held, Decimal("0.004"), Decimal("0.002"))
        assert await _figures(s) == (Decimal("0.005"), Decimal("0.002"))
        assert held.held == to_pico(Decimal("0.002"))  # the local figure is Redis's once Redis answers
        await s.release(held)
        assert await _figures(s) == (Decimal("0.005"), Decimal(0))
    finally:
        await s.aclose()


@pytest.mark.parametrize("how", ["reply lost", "cancelled after"])
async def test_a_reservation_whose_admission_reply_was_lost_is_released(one: RedisDailySpend, how: str) -> None:
    """Redis admitted the sample but the reply never came: the caller has no reservation to release, so the store
    releases it itself (in the background: it may be cancelled)."""
    s = one
    try:
        _patch(s, "reserve", how)
        with pytest.raises(asyncio.CancelledError if "cancelled" in how else OSError):
            await s.reserve("sample", Decimal("0.01"))
        for _ in range(100):
            figures = await _figures(s)
            if figures is not None and figures[1] == 0:
                break
            await asyncio.sleep(0.02)
        assert figures == (Decimal(0), Decimal(0)), figures
    finally:
        await s.aclose()
