"""Charging a request whose client left: only a call still in flight is charged, as routing expected it."""

from __future__ import annotations

import asyncio

import pytest

from gateway.charges import in_flight
from gateway.context import RequestContext
from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.runtime import build_gateway, close_gateway

from .conftest import make_settings


def request(**body: object) -> RequestContext:
    ctx = RequestContext(request_id="r", endpoint="chat", body={"messages": [], **body}, requested_model="big")
    ctx.prompt_tokens_estimate = 40
    return ctx


def test_only_a_call_in_flight_is_left_set() -> None:
    ctx = request()
    with in_flight(ctx, "big"):
        assert ctx.calling == "big"
    assert ctx.calling is None  # answered
    with pytest.raises(UpstreamUnavailable), in_flight(ctx, "big"):
        raise UpstreamUnavailable("down")
    assert ctx.calling is None  # failed: nothing to charge for it
    with pytest.raises(asyncio.CancelledError), in_flight(ctx, "big"):
        raise asyncio.CancelledError
    assert ctx.calling == "big"  # the client left while it ran


async def test_charge_abandoned() -> None:
    gw = await build_gateway(make_settings())
    try:
        charges = gw.pipeline.charges
        failed = request(max_tokens=50)
        failed.attempts = ["small"]  # its call failed; the client left during the backoff
        charges.charge_abandoned(failed)
        assert failed.chosen_model is None and failed.usage.prompt_tokens == 0

        left = request(max_tokens=50, n=2)
        left.attempts, left.calling = ["small", "big"], "big"
        charges.charge_abandoned(left)
        assert left.chosen_model == "big" and left.usage.estimated
        assert (left.usage.prompt_tokens, left.usage.completion_tokens) == (40, 100)

        streamed = request(stream=True)
        streamed.stream, streamed.calling = True, "big"
        charges.charge_abandoned(streamed)
        assert (streamed.usage.prompt_tokens, streamed.usage.completion_tokens) == (40, 0)

        unbounded = request()  # no max_tokens: the model's expected answer
        unbounded.calling = "big"
        charges.charge_abandoned(unbounded)
        assert unbounded.usage.completion_tokens > 0
        charges.charge(unbounded)
        assert unbounded.cost_usd > 0
    finally:
        await close_gateway(gw)


async def test_only_a_timeout_after_reaching_the_upstream_is_paid() -> None:
    gw = await build_gateway(make_settings())
    try:
        charges = gw.pipeline.charges
        ctx = request(max_tokens=50, n=2)
        charges.timed_out(ctx, "small", UpstreamUnavailable("down"))  # failed: nothing generated
        charges.timed_out(ctx, "small", UpstreamTimeout("connecting", reached=False))  # never sent
        assert ctx.cascade_attempts == []
        charges.timed_out(ctx, "big", UpstreamTimeout("no answer in time"))
        charges.timed_out(ctx, "big", UpstreamTimeout("no stream in time"), stream=True)
        answer, stream = ctx.cascade_attempts
        assert (answer.model, answer.outcome, answer.prompt_tokens, answer.completion_tokens) == (
            "big",
            "timed_out",
            40,
            100,
        )
        assert (stream.prompt_tokens, stream.completion_tokens) == (40, 0)  # cancelling a stream stops it
        charges.charge(ctx)  # no answer: the request costs what it paid for, and saved nothing
        assert ctx.cost_usd == answer.cost_usd + stream.cost_usd > 0
        assert ctx.saved_usd == -ctx.cost_usd
        assert charges.paid_attempts(ctx, timed_out=False) == 0  # the spend caps leave them out
    finally:
        await close_gateway(gw)
