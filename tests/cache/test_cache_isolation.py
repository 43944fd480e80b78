"""What a cached answer may be served for: never an answer chosen under another request's cost or latency limit,
never one a route gave while its choice was down, nothing of a request that asked for no storage, never an entry
that is not an answer; and the team a key shares its cache with."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from cache.keys import build_keys
from gateway.config import settings_from_dict
from gateway.constraints import Constraints
from gateway.context import RequestContext
from tests.cache.test_fallback_answers import upstream
from tests.gateway.conftest import THREE_MODELS, chat_reply, gateway_client, sse
from tests.helpers.upstream import Seen, sse_response


def route_settings(**extra: Any) -> Any:
    data = copy.deepcopy(THREE_MODELS)
    data["routes"] = {"best": {"models": ["small", "medium"], "policy": "quality"}}  # medium first
    data["cache"] = {"enabled": True}
    data["server"] = {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600}
    data.update(extra)
    return settings_from_dict(data)


def ask(question: str = "hi", model: str = "best") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0}


def client_of(http: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://gw/v1", api_key="x", http_client=http, max_retries=0)


async def test_an_answer_chosen_under_a_cost_limit_is_not_served_to_a_request_without_it() -> None:
    calls: list[str] = []
    async with gateway_client(route_settings(), upstream(set(), calls)) as http:
        client = client_of(http)
        cheap = await client.chat.completions.with_raw_response.create(
            **ask(), extra_headers={"x-gateway-max-cost-usd": "0.0001"}
        )
        assert cheap.headers["x-gateway-model"] == "small"
        await http.gateway.cache.flush()  # type: ignore[attr-defined]
        free = await client.chat.completions.with_raw_response.create(**ask())
        await http.gateway.cache.flush()  # type: ignore[attr-defined]
        again = await client.chat.completions.with_raw_response.create(
            **ask(), extra_headers={"x-gateway-max-cost-usd": "0.0001"}
        )
    assert free.headers["x-gateway-cache"] == "miss" and free.headers["x-gateway-model"] == "medium"
    assert again.headers["x-gateway-cache"] == "hit" and again.headers["x-gateway-model"] == "small"  # same limit
    assert calls == ["small", "medium"]


def context(body: dict[str, Any]) -> RequestContext:
    return RequestContext(request_id="r", endpoint="chat", body=body, requested_model=str(body["model"]))


def test_keys_without_a_cost_or_latency_limit_are_as_before() -> None:
    """Upgrading the gateway keeps the cache: the limits enter the key only when a request sets them (the digest
    is the one the previous version computed for this request)."""
    ctx = context(ask())
    plain = build_keys(ctx, shared=False, semantic=False).exact
    assert plain == "e:fa43e82714d762b0461ffe09198eea211251a9dd853048715be7846a387646f5"
    ctx.constraints = Constraints(max_latency_ms=500.0)
    assert build_keys(ctx, shared=False, semantic=False).exact != plain


def test_a_team_s_keys_share_entries_unless_the_operator_says_not() -> None:
    alice, bob = context(ask()), context(ask())
    alice.key_id, alice.team, bob.key_id, bob.team = "k1", "acme", "k2", "acme"
    same = [build_keys(c, shared=False, semantic=False).exact for c in (alice, bob)]
    apart = [build_keys(c, shared=False, semantic=False, by_team=False).exact for c in (alice, bob)]
    assert same[0] == same[1]
    assert apart[0] != apart[1]


async def test_an_answer_given_while_the_route_s_choice_is_down_is_not_cached() -> None:
    """The route's choice (``medium``) fails once and its breaker opens: later requests are routed to ``small``
    at once, not as a fallback; those answers are served but not kept, so the route's usual answer is back when
    ``medium`` recovers."""
    down = {"medium"}
    calls: list[str] = []
    settings = route_settings(breaker={"failure_threshold": 1, "reset_seconds": 0.3})
    async with gateway_client(settings, upstream(down, calls)) as http:
        client = client_of(http)
        first = await client.chat.completions.with_raw_response.create(**ask())  # medium fails, small answers
        during = await client.chat.completions.with_raw_response.create(**ask())  # medium's breaker is open
        await http.gateway.cache.flush()  # type: ignore[attr-defined]
        down.clear()
        await asyncio.sleep(0.4)
        after = await client.chat.completions.with_raw_response.create(**ask())
    assert first.headers["x-gateway-model"] == "small"
    assert during.headers["x-gateway-model"] == "small" and during.headers["x-gateway-cache"] == "miss"
    assert calls == ["medium", "small", "small", "medium"]  # during: straight to small, as planned
    assert after.headers["x-gateway-cache"] == "miss" and after.headers["x-gateway-model"] == "medium"


async def test_a_down_model_the_route_would_not_choose_does_not_stop_caching() -> None:
    """``small`` is down, but the quality route chooses ``medium`` anyway: its answer is cached as usual."""
    down = {"small"}
    calls: list[str] = []
    settings = route_settings(breaker={"failure_threshold": 1, "reset_seconds": 3600})
    async with gateway_client(settings, upstream(down, calls)) as http:
        client = client_of(http)
        with pytest.raises(openai.InternalServerError):  # small's breaker opens
            await client.chat.completions.create(**ask(model="small"))
        first = await client.chat.completions.with_raw_response.create(**ask())
        await http.gateway.cache.flush()  # type: ignore[attr-defined]
        second = await client.chat.completions.with_raw_response.create(**ask())
    assert first.headers["x-gateway-model"] == "medium"
    assert second.headers["x-gateway-cache"] == "hit"


async def test_store_false_keeps_the_answer_out_of_the_cache() -> None:
    """An explicit ``store: false`` in a chat body, or the Responses API's, asks that nothing be kept: as
    ``Cache-Control: no-store``, the answer is served and not stored (a later request may still be served
    from the cache)."""
    calls: list[str] = []
    async with gateway_client(route_settings(), upstream(set(), calls)) as http:
        client = client_of(http)
        for _ in range(2):
            await client.chat.completions.create(**ask("chat"), store=False)
            await http.gateway.cache.flush()  # type: ignore[attr-defined]
        for _ in range(2):
            await client.responses.create(model="best", input="responses", temperature=0, store=False)
            await http.gateway.cache.flush()  # type: ignore[attr-defined]
        stored = await client.chat.completions.with_raw_response.create(**ask("chat"))  # stores
        await http.gateway.cache.flush()  # type: ignore[attr-defined]
        private_hit = await client.chat.completions.with_raw_response.create(**ask("chat"), store=False)
    assert calls == ["medium"] * 5
    assert stored.headers["x-gateway-cache"] == "miss"
    assert private_hit.headers["x-gateway-cache"] == "hit"


def answering(calls: list[str]) -> Callable[[Seen], web.Response]:
    """Each backend answers as itself, streamed when asked to."""

    def handle(request: Seen) -> web.Response:
        calls.append(request.backend)
        reply = chat_reply(request.backend, "from " + request.backend)
        if not request.json().get("stream"):
            return web.json_response(reply)
        chunk = {**reply, "object": "chat.completion.chunk"}
        delta = {"index": 0, "delta": {"role": "assistant", "content": reply["choices"][0]["message"]["content"]}}
        end = {"index": 0, "delta": {}, "finish_reason": "stop"}
        return sse_response(
            sse(
                {**chunk, "choices": [delta]},
                {**chunk, "choices": [end]},
                {**chunk, "choices": [], "usage": reply["usage"]},
                "[DONE]",
            )
        )

    return handle


async def test_a_cache_entry_that_is_not_an_answer_is_a_miss() -> None:
    """Valid JSON under the cache's key that is not an answer (another writer's, another version's): a miss
    and a fresh answer, streamed or not, never a 500 or a broken stream."""
    calls: list[str] = []
    async with gateway_client(route_settings(), answering(calls)) as http:
        client = client_of(http)
        await client.chat.completions.create(**ask())
        await http.gateway.cache.flush()  # type: ignore[attr-defined]
        store = http.gateway.cache.store_backend  # type: ignore[attr-defined]
        key = build_keys(context(ask()), shared=False, semantic=False).exact
        good = orjson.loads(await store.get(key))
        bad_bodies = [
            {**good["body"], "usage": "lots"},
            {**good["body"], "usage": {"prompt_tokens": "x"}},
            {**good["body"], "choices": [{"index": 0, "message": "hello", "finish_reason": "stop"}]},
            {**good["body"], "choices": "none"},
        ]
        results = []
        for body in bad_bodies:
            await store.put(key, orjson.dumps({**good, "body": body}), 60)
            plain = await client.chat.completions.with_raw_response.create(**ask())
            await store.put(key, orjson.dumps({**good, "body": body}), 60)
            stream = await client.chat.completions.with_raw_response.create(**ask(), stream=True)
            chunks = [c async for c in stream.parse()]
            results.append((plain.headers["x-gateway-cache"], plain.parse().choices[0].message.content, chunks))
    for cache_status, text, chunks in results:
        assert cache_status == "miss" and text == "from medium"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from medium"
