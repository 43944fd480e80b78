"""The cache service on its own: policy, Cache-Control, isolation, failures and the semantic lookup."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from cache.base import BucketDelta, BucketMember, ResponseStore
from cache.learn import RouteRules
from cache.memory import MemoryStore
from cache.redis import RedisStore
from cache.semantic import Embedder, SemanticEncoder, encode_vector
from cache.service import CacheService
from gateway.config import CacheSettings
from gateway.constraints import Constraints
from gateway.context import RequestContext
from gateway.metrics import Metrics


def answer(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "m1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def request(
    question: str = "What is 2+2?",
    *,
    system: str = "Be brief.",
    model: str = "faq",
    headers: dict[str, str] | None = None,
    key_id: str | None = None,
    **params: Any,
) -> RequestContext:
    body = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "temperature": 0,
        **params,
    }
    ctx = RequestContext(request_id="r", endpoint="chat", body=body, requested_model=model, headers=headers or {})
    ctx.constraints = Constraints.parse(ctx.headers)
    ctx.key_id = key_id
    ctx.chosen_model = "m1"
    return ctx


def errors(metrics: Metrics, op: str) -> float:
    return metrics.registry.get_sample_value("gateway_cache_errors_total", {"op": op}) or 0.0


async def make(
    store: ResponseStore, encoder: SemanticEncoder | None = None, max_error: float | None = None, **cfg: Any
) -> CacheService:
    settings = CacheSettings(**cfg)
    rules = RouteRules(
        settings.semantic_threshold, max_error, min(settings.semantic_floor, settings.semantic_threshold)
    )
    svc = CacheService(
        store,
        settings,
        Metrics(),
        semantic_routes={"faq": rules} if encoder else {},
        encoder=encoder,
    )
    await svc.start()
    return svc


@pytest.fixture(params=["memory", "redis"])
async def svc(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[CacheService]:
    if request.param == "memory":
        store: ResponseStore = MemoryStore()
    else:
        store = RedisStore(redis_url, prefix=request.getfixturevalue("redis_prefix"), timeout_s=1.0)
    s = await make(store, timeout_ms=1000)
    yield s
    await s.aclose()


async def remember(svc: CacheService, ctx: RequestContext, text: str) -> None:
    assert await svc.lookup(ctx) is None
    svc.store(ctx, answer(text))
    await svc.flush()


async def test_miss_then_hit(svc: CacheService) -> None:
    first = request()
    await remember(svc, first, "4")
    assert first.cache_status == "miss"
    again = request()
    found = await svc.lookup(again)
    assert found is not None and again.cache_status == "hit"
    assert found.status == "hit" and found.original_model == "m1"
    assert found.body["choices"][0]["message"]["content"] == "4"
    other = request("What is 3+3?")
    assert await svc.lookup(other) is None and other.cache_status == "miss"


async def test_non_deterministic_requests_bypass(svc: CacheService) -> None:
    hot = request(temperature=0.7)
    assert await svc.lookup(hot) is None and hot.cache_status == "bypass"
    svc.store(hot, answer("x"))
    assert not svc.wants_stream(hot)
    seeded = request(temperature=0.7, seed=1)
    await remember(svc, seeded, "seeded")
    assert await svc.lookup(request(temperature=0.7, seed=1)) is not None


async def test_only_deterministic_can_be_widened(redis_url: str) -> None:
    svc = await make(MemoryStore(), only_deterministic=False)
    await remember(svc, request(temperature=1.0), "warm")
    hit = request(temperature=1.0)
    assert await svc.lookup(hit) is not None and hit.cache_status == "hit"
    await svc.aclose()


async def test_no_cache_refreshes_and_no_store_does_not_store(svc: CacheService) -> None:
    await remember(svc, request(), "old")
    refresh = request(headers={"cache-control": "no-cache"})
    assert await svc.lookup(refresh) is None and refresh.cache_status == "bypass"
    pragma = request(headers={"pragma": "no-cache"})  # HTTP/1.0's, without a Cache-Control header
    assert await svc.lookup(pragma) is None and pragma.cache_status == "bypass"
    svc.store(refresh, answer("new"))
    await svc.flush()
    found = await svc.lookup(request())
    assert found is not None and found.body["choices"][0]["message"]["content"] == "new"

    private = request("secret?", headers={"cache-control": "no-store"})
    await remember(svc, private, "s")
    assert not svc.wants_stream(private)
    assert await svc.lookup(request("secret?")) is None


async def test_ttl_header(svc: CacheService) -> None:
    short = request("short?", headers={"x-gateway-cache-ttl": "1"})
    await remember(svc, short, "brief")
    assert await svc.lookup(request("short?")) is not None
    zero = request("zero?", headers={"x-gateway-cache-ttl": "0"})
    await remember(svc, zero, "z")
    assert await svc.lookup(request("zero?")) is None
    long = request("long?", headers={"x-gateway-cache-ttl": "1e9"})  # capped at max_ttl_seconds
    await remember(svc, long, "l")
    assert await svc.lookup(request("long?")) is not None


async def test_tenants_are_isolated(svc: CacheService) -> None:
    await remember(svc, request(key_id="alice"), "alice's")
    bob = request(key_id="bob")
    assert await svc.lookup(bob) is None and bob.cache_status == "miss"
    assert await svc.lookup(request(key_id="alice")) is not None


async def test_shared_namespace_shares() -> None:
    svc = await make(MemoryStore(), shared_namespace=True)
    await remember(svc, request(key_id="alice"), "for all")
    assert await svc.lookup(request(key_id="bob")) is not None
    await svc.aclose()


async def test_unfinished_answers_are_not_stored(svc: CacheService) -> None:
    ctx = request("cut?")
    assert await svc.lookup(ctx) is None
    body = answer("partial")
    body["choices"][0]["finish_reason"] = None
    svc.store(ctx, body)
    svc.store_stream(ctx, [{"id": "c", "choices": [{"index": 0, "delta": {"content": "par"}}]}])
    await svc.flush()
    assert await svc.lookup(request("cut?")) is None


async def test_a_dead_store_never_fails_a_request(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore("redis://127.0.0.1:1/0", timeout_s=0.05)  # nothing listens on port 1
    svc = await make(store, retry_after_seconds=0, error_log_interval_seconds=60)
    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        for _ in range(5):
            ctx = request()
            assert await svc.lookup(ctx) is None
            assert ctx.cache_status == "miss"
            svc.store(ctx, answer("x"))
        await svc.flush()
    assert errors(svc.metrics, "get") == 5
    assert errors(svc.metrics, "put") == 5
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1  # once per interval, not once per request
    await svc.aclose()


async def test_semantic_hit_on_a_paraphrase(embedder: Embedder) -> None:
    encoder = SemanticEncoder(embedder, timeout_s=5)
    svc = await make(MemoryStore(), encoder, semantic_threshold=0.8)
    await remember(svc, request("How do I reset my password?"), "Click 'Forgot password'.")
    para = request("How can I reset my password?")
    found = await svc.lookup(para)
    assert found is not None and found.status == "semantic-hit"
    assert para.cache_status == "semantic-hit" and para.cache_score is not None and para.cache_score > 0.8
    unrelated = request("What is the refund policy?")
    assert await svc.lookup(unrelated) is None and unrelated.cache_status == "miss"
    other_system = request("How can I reset my password?", system="Answer in French.")
    assert await svc.lookup(other_system) is None
    other_params = request("How can I reset my password?", max_tokens=5)
    assert await svc.lookup(other_params) is None
    plain_model = request("How can I reset my password?", model="m1")  # a model, not a semantic route
    assert await svc.lookup(plain_model) is None
    await svc.aclose()


async def test_texts_the_model_cannot_read_whole_are_matched_exactly_only(embedder: Embedder) -> None:
    """Past the model's 256 word pieces, or in characters its vocabulary lacks, different questions embed alike
    (a similarity of 1.0): a document followed by different tasks, 👍 against 👎. Such texts are matched exactly
    (an exact repeat still hits), and neither searched nor stored for others to match."""
    encoder = SemanticEncoder(embedder, timeout_s=5)
    svc = await make(MemoryStore(), encoder, semantic_threshold=0.8)
    document = " ".join(f"line {i} of the quarterly report says sales rose." for i in range(40))  # > 256 pieces
    assert len(document) < 2000 and not encoder.reads_whole(document)
    await remember(svc, request(document + " Task: summarize it."), "A summary.")
    translate = request(document + " Task: translate it into German.")
    assert await svc.lookup(translate) is None and translate.cache_status == "miss"
    await remember(svc, request("Is 👍 a positive or a negative reaction?"), "Positive.")
    thumbs_down = request("Is 👎 a positive or a negative reaction?")
    assert await svc.lookup(thumbs_down) is None and thumbs_down.cache_status == "miss"
    again = await svc.lookup(request("Is 👍 a positive or a negative reaction?"))
    assert again is not None and again.status == "hit"  # the exact repeat
    huge = request("How do I reset my password? " + "x" * 3000)  # over SEMANTIC_MAX_CHARS: not even tokenized
    assert await svc.lookup(huge) is None
    await svc.aclose()


async def test_the_verifier_rejects_a_near_duplicate_with_another_number(embedder: Embedder) -> None:
    encoder = SemanticEncoder(embedder, timeout_s=5)
    svc = await make(MemoryStore(), encoder, semantic_threshold=0.8)
    await remember(svc, request("How do I lose 5 kg in a month?"), "Eat less, move more.")
    other = request("How do I lose 10 kg in a month?")
    assert await svc.lookup(other) is None and other.cache_status == "miss"
    assert "numbers differ ([10] vs [5])" in other.extra["cache_decision"]
    assert "not served" in other.extra["cache_decision"]
    same = request("How can I lose 5 kg within a month?")
    found = await svc.lookup(same)
    assert found is not None and found.reason is not None
    assert (
        found.reason.startswith("semantic served: similarity 0.") and "threshold 0.8000, verifier pass" in found.reason
    )
    await svc.aclose()


async def test_checks_are_queued_for_served_hits_and_explored_candidates(embedder: Embedder) -> None:
    encoder = SemanticEncoder(embedder, timeout_s=5)
    svc = await make(MemoryStore(), encoder, semantic_threshold=0.8, semantic_check_rate=1.0, semantic_explore_rate=1.0)
    await remember(svc, request("How do I reset my password?"), "Click 'Forgot password'.")
    para = request("How can I reset my password?")
    assert await svc.lookup(para) is not None
    check = svc.checks.get_nowait()
    assert check.served and check.reference is None and check.cached_answer == "Click 'Forgot password'."
    assert check.question == "How can I reset my password?" and check.cached_question == "How do I reset my password?"
    assert svc.learner.record_outcome(check.hit_id, True)
    # a route with an error bound and no evidence yet serves nothing, but explores
    cold = await make(MemoryStore(), encoder, max_error=0.05, semantic_check_rate=1.0, semantic_explore_rate=1.0)
    await remember(cold, request("How do I reset my password?"), "Click 'Forgot password'.")
    para = request("How can I reset my password?")
    assert await cold.lookup(para) is None and para.cache_status == "miss"
    assert "no threshold verified yet" in para.extra["cache_decision"]
    assert cold.checks.empty()  # judged once the model's own answer is known
    choice = {"index": 0, "message": {"role": "assistant", "content": "Use the reset link."}, "finish_reason": "stop"}
    cold.store(para, {"object": "chat.completion", "choices": [choice]})
    explored = await asyncio.wait_for(cold.checks.get(), 5)
    assert not explored.served and explored.reference == "Use the reset link."
    assert explored.cached_answer == "Click 'Forgot password'."
    assert cold.learner.record_outcome(explored.hit_id, True)
    assert cold.learner.report()["faq"]["observations"] == 1
    await svc.aclose()
    await cold.aclose()


class SlowBuckets(MemoryStore):
    """Each bucket read takes 50 ms: a bucket read in pages outlasts one lookup's timeout."""

    async def bucket_since(self, bucket: str, since: str | None, limit: int | None = None) -> BucketDelta:
        await asyncio.sleep(0.05)
        return await super().bucket_since(bucket, since, limit)


async def test_a_large_bucket_is_read_in_pages_in_the_background(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cache.service._PAGE", 100)
    store = SlowBuckets(max_entries=1000, max_bucket=1000)
    svc = await make(store, SemanticEncoder(embedder, timeout_s=5), timeout_ms=100, semantic_threshold=0.8)
    await remember(svc, request("How do I reset my password?"), "Click 'Forgot password'.")
    bucket = next(iter(store._buckets))
    rng = np.random.default_rng(0)
    for i in range(450):  # newer rows that do not match, read after the answer's row
        v = rng.standard_normal(384).astype(np.float32)
        member = BucketMember(f"e:other{i}", encode_vector(v / np.linalg.norm(v)), f"q{i}", time.time() + 60)
        await store.add_vector(bucket, member, 60)
    fresh = await make(store, SemanticEncoder(embedder, timeout_s=5), timeout_ms=120, semantic_threshold=0.8)
    para = request("How can I reset my password?")
    t0 = time.perf_counter()
    first = await fresh.lookup(para)  # 5 pages x 50 ms: the lookup stops waiting after 120 ms
    assert time.perf_counter() - t0 < 1.0  # 0.1 s of waiting, plus one embedding on a busy machine
    assert first is not None  # the answer's row came in the first page
    for _ in range(500):  # the rest arrives in the background
        if len(fresh.index) == 451:
            break
        await asyncio.sleep(0.01)
    assert len(fresh.index) == 451
    assert await fresh.lookup(request("How can I reset my password?")) is not None
    await svc.aclose()
    await fresh.aclose()
