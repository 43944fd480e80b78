"""The semantic cache over real sockets: the gateway in front of an upstream, the openai SDK as the client,
and for the error bound a judge server of our own on loopback that the hit checker asks (the quality
monitor will take its place).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cache.judge import HitChecker, Messages
from cache.learn import Estimate
from cache.service import CacheService
from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.cache.conftest import RunningGateway, running_gateway
from tests.cache.fake_upstream import UpstreamState
from tests.helpers.servers import run_asgi_server

pytestmark = pytest.mark.usefixtures("embedder")  # skips without the packaged model

SYSTEM = "You are the help desk of an online shop."


def settings(upstream_url: str, tmp_path: Path, route: dict[str, Any], cache: dict[str, Any], model: str) -> Any:
    return settings_from_dict(
        {
            "models": [
                {"name": "m1", "backend": "openai", "base_url": f"{upstream_url}/v1", "upstream_model": model,
                 "input_cost_per_token": "0.00001", "output_cost_per_token": "0.00003", "context_window": 8192}
            ],
            "routes": {"faq": {"models": ["m1"], "semantic_cache": True, **route}},
            "cache": {"embed_timeout_ms": 5000, "timeout_ms": 2000, **cache},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path}/ledger.db"},
            "retry": {"max_attempts": 1, "backoff_base_ms": 0},
            "server": {"metrics_scrape_seconds": 3600},
        }
    )  # fmt: skip


@pytest.fixture
def simulator() -> Iterator[str]:
    with run_asgi_server(create_simulator_app("fast", time_scale=0.01)) as url:
        yield url


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


async def remember(client: openai.AsyncOpenAI, gw: RunningGateway, question: str) -> None:
    await client.chat.completions.create(model="faq", messages=ask(question), temperature=0)  # type: ignore[arg-type]
    await gw.wait_writes()


async def test_a_semantic_hit_is_explained(simulator: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = settings(simulator, tmp_path, {}, {}, "sim-fast")
    with running_gateway(cfg) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key="none", max_retries=0)
        await remember(client, gw, "How do I reset my password?")
        with caplog.at_level(logging.INFO, logger="gateway.request"):
            raw = await client.chat.completions.with_raw_response.create(
                model="faq",
                messages=ask("How can I reset my password?"),  # type: ignore[arg-type]
                temperature=0,
            )
            for _ in range(200):  # the log line is written just after the response
                lines = [getattr(r, "gateway", {}) for r in caplog.records if r.name == "gateway.request"]
                logged = [x for x in lines if x.get("cache") == "semantic-hit"]
                if logged:
                    break
                await asyncio.sleep(0.01)
        await client.close()
    assert raw.headers["x-gateway-cache"] == "semantic-hit"
    score = float(raw.headers["x-gateway-cache-score"])
    reason = raw.headers["x-gateway-reason"]
    assert re.fullmatch(
        rf"semantic served: similarity {score:.4f}, threshold 0\.\d{{4}}, verifier pass \(hit sh-[0-9a-f]{{16}}\)",
        reason,
    ), reason
    assert (
        logged
        and logged[-1]["cache_decision"] == reason
        and logged[-1]["cache_score"] == pytest.approx(score, abs=1e-4)
    )


async def test_the_verifier_rejects_a_near_duplicate_with_another_number(simulator: str, tmp_path: Path) -> None:
    cfg = settings(simulator, tmp_path, {}, {"semantic_threshold": 0.8}, "sim-fast")
    with running_gateway(cfg) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key="none", max_retries=0)
        await remember(client, gw, "Can I return an order after 14 days?")
        raw = await client.chat.completions.with_raw_response.create(
            model="faq",
            messages=ask("Can I return an order after 30 days?"),  # type: ignore[arg-type]
            temperature=0,
        )
        same = await client.chat.completions.with_raw_response.create(
            model="faq",
            messages=ask("Am I able to return an order after 14 days?"),  # type: ignore[arg-type]
            temperature=0,
        )
        await client.close()
    assert raw.headers["x-gateway-cache"] == "miss"
    assert same.headers["x-gateway-cache"] == "semantic-hit"


# -- the error bound, with outcomes from a judge on loopback ------------------------------------------------

#: The cached questions, and what each asked question truly wants (None: none of them).
CACHED = [
    "How do I cancel my subscription?",
    "Where can I download my invoice?",
    "How do I change my delivery address?",
    "Can I pay with PayPal?",
]
ASKED: dict[str, str | None] = {
    "How can I cancel my subscription?": CACHED[0],
    "What is the way to cancel my subscription?": CACHED[0],
    "I want to cancel my subscription, how?": CACHED[0],
    "How do I cancel my order?": None,
    "How do I pause my subscription?": None,
    "How do I renew my subscription?": None,
    "Where do I download my invoice?": CACHED[1],
    "How can I get my invoice as a download?": CACHED[1],
    "Where can I download my receipt?": None,
    "Where can I see my invoice history?": None,
    "How can I change my delivery address?": CACHED[2],
    "How do I update the delivery address?": CACHED[2],
    "How do I change my billing address?": None,
    "How do I change my email address?": None,
    "Is paying with PayPal possible?": CACHED[3],
    "Do you accept PayPal payments?": CACHED[3],
    "Can I pay with a credit card?": None,
    "Can I pay in installments?": None,
}


def create_judge(verdicts: list[bool]) -> Starlette:
    """A judge model that knows the truth (``ASKED``) and replies in the format the cache asks for."""

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        new = re.search(r"NEW question:\n(.*?)\n\n", prompt, re.S)
        old = re.search(r"EARLIER question:\n(.*?)\n\n", prompt, re.S)
        assert new and old and "CACHED answer" in prompt
        good = ASKED.get(new.group(1)) == old.group(1)
        verdicts.append(good)
        text = f"The cached answer {'does' if good else 'does not'} fit.\nVERDICT: {'YES' if good else 'NO'}"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return JSONResponse(
            {"id": "j", "object": "chat.completion", "created": 0, "model": "judge", "choices": [choice]}
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def _start_checker(svc: CacheService, judge_url: str, upstream_url: str) -> HitChecker:
    judge = openai.AsyncOpenAI(base_url=f"{judge_url}/v1", api_key="none", max_retries=0)
    model = openai.AsyncOpenAI(base_url=f"{upstream_url}/v1", api_key="none", max_retries=0)

    async def chat(messages: Messages) -> str:
        reply = await judge.chat.completions.create(model="judge", messages=messages)  # type: ignore[arg-type]
        return reply.choices[0].message.content or ""

    async def shadow(request: dict[str, Any]) -> str:
        reply = await model.chat.completions.create(**{**request, "model": "m1"})
        return reply.choices[0].message.content or ""

    checker = HitChecker(svc.checks, svc.learner, chat, shadow, concurrency=2, timeout_s=10)
    checker.start()
    return checker


async def _traffic(
    upstream_url: str, tmp_path: Path, redis_url: str, prefix: str, route: dict[str, Any], check: float = 1.0
) -> tuple[list[str], list[bool], dict[str, Any], Estimate, HitChecker]:
    """Cache ``CACHED``, ask every ``ASKED`` question 6 times with a judge checking every decision.
    Returns the cache status of each ask, per semantic hit whether it was truly right, the route's report,
    its false-hit estimate and the checker."""
    cache = {"redis_url": redis_url, "key_prefix": prefix, "semantic_check_rate": check,
             "semantic_explore_rate": check, "semantic_floor": 0.5}  # fmt: skip
    cfg = settings(upstream_url, tmp_path, route, cache, "m1")
    verdicts: list[bool] = []
    served: list[bool] = []
    statuses: list[str] = []
    with run_asgi_server(create_judge(verdicts)) as judge_url, running_gateway(cfg) as gw:
        svc = gw.gateway.cache
        assert isinstance(svc, CacheService) and svc.loop is not None
        checker = asyncio.run_coroutine_threadsafe(_start_checker(svc, judge_url, upstream_url), svc.loop).result(10)
        client = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key="none", max_retries=0)
        for q in CACHED:
            await remember(client, gw, q)
        for _ in range(6):
            for question, truth in ASKED.items():
                raw = await client.chat.completions.with_raw_response.create(
                    model="faq",
                    messages=ask(question),  # type: ignore[arg-type]
                    temperature=0,
                    extra_headers={"x-gateway-cache-ttl": "0"},  # not stored: every ask stays a semantic question
                )
                status = raw.headers["x-gateway-cache"]
                statuses.append(status)
                if status == "semantic-hit":
                    answered = raw.parse().choices[0].message.content or ""
                    served.append(truth is not None and answered.endswith(f"to: {truth}"))
                await _drain(svc, checker)
        await client.close()
        report = svc.learner.report()["faq"]
        estimate = svc.learner.false_hit_rate("faq")
        asyncio.run_coroutine_threadsafe(checker.aclose(), svc.loop).result(10)
    assert len(verdicts) == checker.done
    return statuses, served, report, estimate, checker


async def test_judged_outcomes_bound_the_served_error(
    upstream: tuple[str, UpstreamState], tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    url, _state = upstream
    # a fixed low threshold, nothing checked, serves many wrong answers to this traffic ...
    _, served, _, estimate, _ = await _traffic(
        url, tmp_path, redis_url, redis_prefix + "static:", {"semantic_threshold": 0.6}, check=0.0
    )
    wrong_static = served.count(False) / len(served)
    assert wrong_static > 0.2
    assert estimate.n == 0 and estimate.rate is None  # nothing measured
    # ... the same traffic on a route with an error bound: cold misses, then a threshold that meets it
    max_error = 0.1
    statuses, served, report, estimate, checker = await _traffic(
        url, tmp_path, redis_url, redis_prefix + "bound:", {"semantic_threshold": 0.6, "semantic_max_error": max_error}
    )
    assert all(s == "miss" for s in statuses[: len(ASKED)])  # cold: no threshold verified, every candidate misses
    assert served, f"no semantic hit after {len(statuses)} questions: {report}"
    wrong = served.count(False) / len(served)
    assert wrong <= max_error, (wrong, report)
    assert report["adaptive"] is True and report["threshold"] is not None and report["threshold"] > 0.6
    assert estimate.n == len(served) and estimate.rate == pytest.approx(wrong)  # every hit was checked
    assert estimate.low <= wrong <= estimate.high
    assert checker.done >= len(served)


async def _drain(svc: CacheService, checker: HitChecker) -> None:
    """Wait (5 s at most) until every check submitted so far has a verdict."""
    await asyncio.sleep(0.02)  # a candidate's exploration check is submitted just after the answer
    for _ in range(500):  # the checker runs in the server's thread: poll its counters
        if checker.done + checker.failed >= svc.checks_submitted:
            return
        await asyncio.sleep(0.01)
