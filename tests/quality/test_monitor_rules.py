"""The monitor's sampling rules and its Prometheus gauges, on a gateway built in process."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from cache.directives import cache_control
from cache.judge import Check
from cache.learn import Learner
from gateway.context import RequestContext
from gateway.http_limits import header_dict
from gateway.quality.gauges import QualityGauges
from gateway.quality.monitor import _SemanticChecker
from gateway.runtime import build_gateway, close_gateway
from tests.quality.conftest import make_settings


def answered(headers: dict[str, str]) -> RequestContext:
    ctx = RequestContext(request_id="r", endpoint="chat", body={"messages": []}, requested_model="auto")
    ctx.headers, ctx.route, ctx.chosen_model, ctx.status_code = headers, "auto", "weak", 200
    return ctx


async def test_no_store_is_honoured_however_it_is_written(tmp_path: Path) -> None:
    """Cache-Control directives are case-insensitive (the cache reads them so): a client asking for no storage
    keeps its prompt out of the verdicts table whatever the case."""
    sims = {"weak": "http://127.0.0.1:9", "strong": "http://127.0.0.1:9"}
    gw = await build_gateway(make_settings(sims, tmp_path, quality={}))
    try:
        monitor = gw.monitor
        assert monitor is not None
        assert monitor.wants(answered({}))
        for value in ("no-store", "No-Store", "NO-STORE", "private, No-Store"):
            assert not monitor.wants(answered({"cache-control": value})), value
    finally:
        await close_gateway(gw)


async def test_what_the_client_asked_to_keep_private_or_the_judge_cannot_read_is_not_sampled(tmp_path: Path) -> None:
    """``store: false`` (a chat body's, or the Responses API's), an image, or a prompt longer than
    ``quality.max_prompt_tokens``: the sample would keep the prompt, judge what the judge cannot see, or cost
    more than a sample should."""
    sims = {"weak": "http://127.0.0.1:9", "strong": "http://127.0.0.1:9"}
    gw = await build_gateway(make_settings(sims, tmp_path, quality={"max_prompt_tokens": 100}))
    try:
        monitor = gw.monitor
        assert monitor is not None
        stored = answered({})
        stored.body["store"] = False
        responses = answered({})
        responses.extra["store"] = False  # what the Responses door sets for its store: false
        image = answered({})
        image.body["messages"] = [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}, {"type": "text"}]}
        ]
        long = answered({})
        long.usage.prompt_tokens = 101
        assert monitor.wants(answered({}))
        for ctx in (stored, responses, image, long):
            assert not monitor.wants(ctx)
    finally:
        await close_gateway(gw)


def test_the_judge_sees_the_conversation_and_the_reference_a_bounded_request() -> None:
    from gateway.quality.monitor import _NOT_FOR_THE_REFERENCE
    from gateway.quality.prompts import conversation

    messages = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Weather today?"},
        {"role": "assistant", "content": "Sunny, matey."},
        {"role": "user", "content": "and tomorrow?"},
    ]
    shown = conversation(messages, "and tomorrow?")
    assert shown == (
        "[Conversation so far]\nSystem: You are a pirate.\nUser: Weather today?\nAssistant: Sunny, matey.\n\n"
        "[Last user message]\nand tomorrow?"
    )
    assert conversation(messages[-1:], "and tomorrow?") == "and tomorrow?"
    assert {"store", "metadata", "user", "stream"} <= _NOT_FOR_THE_REFERENCE


def test_a_route_without_samples_has_no_estimate_gauge() -> None:
    """With nothing judged in the window the estimate is dropped, not left at its last value."""
    registry = CollectorRegistry()
    gauges = QualityGauges(registry)

    def row(samples: int, rate: float | None) -> dict[str, Any]:
        estimate = {"rate": rate, "ci95_low": rate and rate - 0.1, "ci95_high": rate and rate + 0.05}
        false_hits = {"rate": None, "ci95_low": None, "ci95_high": None, "checked": 0}
        return {
            "route": "auto",
            "samples": samples,
            "wins": samples,
            "ties": 0,
            "losses": 0,
            "estimate": estimate,
            "semantic_false_hits": false_hits,
        }

    gauges.update([row(10, 0.9)], Decimal(0))
    assert registry.get_sample_value("gateway_quality_estimate", {"route": "auto", "bound": "estimate"}) == 0.9
    gauges.update([row(0, None)], Decimal(0))
    assert registry.get_sample_value("gateway_quality_estimate", {"route": "auto", "bound": "estimate"}) is None
    assert registry.get_sample_value("gateway_quality_verdicts", {"route": "auto", "verdict": "win"}) == 0
    gauges.update([row(0, None)], Decimal(0))  # dropping what is not there is fine
    gauges.update([row(10, 0.9)], Decimal(0))
    gauges.update([], Decimal(0))  # no row at all for the route (no verdict, no traffic): no stale figure either
    assert registry.get_sample_value("gateway_quality_estimate", {"route": "auto", "bound": "estimate"}) is None
    assert registry.get_sample_value("gateway_quality_verdicts", {"route": "auto", "verdict": "win"}) == 0


async def test_no_store_on_one_of_several_cache_control_lines_is_honoured(tmp_path: Path) -> None:
    """``Cache-Control: no-store`` then ``Cache-Control: no-transform`` (a proxy adding its own): the lines are one
    list (RFC 9110). Only the last one was read: the prompt went to the reference and judge, was stored beside a
    verdict, and the answer cached."""
    headers = header_dict([(b"cache-control", b"no-store"), (b"cache-control", b"no-transform")])
    assert headers["cache-control"] == "no-store, no-transform"
    assert "no-store" in cache_control(headers)
    sims = {"weak": "http://127.0.0.1:9", "strong": "http://127.0.0.1:9"}
    gw = await build_gateway(make_settings(sims, tmp_path, quality={}))
    try:
        assert gw.monitor is not None and not gw.monitor.wants(answered(headers))
    finally:
        await close_gateway(gw)


def _check(route: str, **request: Any) -> Check:
    body = {"model": route, "messages": [{"role": "user", "content": "How can I cancel?"}], **request}
    return Check("hit-1", route, True, 0.93, "How can I cancel?", "How do I cancel?", "Click Cancel.", body)


async def test_semantic_checks_follow_the_sampled_requests_rules(tmp_path: Path) -> None:
    """A semantic hit's check asked the reference again with the client's ``store`` and ``metadata`` (sampled
    requests go without them), re-sent requests with tools (which sampling never does), and ran on routes whose
    data must stay where it was served (their own ``quality_sample_rate: 0``)."""
    sims = {"weak": "http://127.0.0.1:9", "strong": "http://127.0.0.1:9"}
    settings = make_settings(sims, tmp_path, quality={"sample_rate": 0})
    local = settings.routes["auto"].model_copy(update={"quality_sample_rate": 0.0})
    local_settings = settings.model_copy(update={"routes": {**settings.routes, "local": local}})
    gw = await build_gateway(local_settings)
    asked: list[dict[str, Any]] = []
    try:
        monitor = gw.monitor
        assert monitor is not None

        async def reference_answer(model: str, body: dict[str, Any]) -> str:
            asked.append(body)
            return "Open settings, then Cancel."

        async def chat(model: str, messages: Any) -> str:
            return "[[YES]]"

        monitor.reference_answer = reference_answer  # type: ignore[method-assign]
        monitor.chat = chat  # type: ignore[method-assign]
        checker = _SemanticChecker(monitor, asyncio.Queue(), Learner({}))
        tool = {"type": "function", "function": {"name": "wire_money", "parameters": {"type": "object"}}}
        for skipped in (_check("auto", tools=[tool]), _check("auto", n=2), _check("local")):
            assert await checker.run_one(skipped) is None
        assert asked == []
        await checker.run_one(_check("auto", store=True, metadata={"tenant": "acme"}, user="u1", temperature=0))
    finally:
        await close_gateway(gw)
    assert len(asked) == 1
    assert not {"store", "metadata", "user"} & set(asked[0]) and asked[0]["temperature"] == 0
