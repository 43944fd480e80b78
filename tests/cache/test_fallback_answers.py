"""A model asked for by name and answered by one of its fallbacks: that answer is not cached under the name (it
was served for the name's model for the cache's whole TTL, after the model recovered); embedding models fall back
like chat models (their fallbacks were accepted and never tried)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import openai
from aiohttp import web

from gateway.config import settings_from_dict
from tests.gateway.conftest import THREE_MODELS, chat_reply, gateway_client
from tests.helpers.upstream import Seen

EMBEDDINGS = [
    {"name": "e1", "backend": "vllm", "base_url": "http://e1/v1", "mode": "embedding", "fallbacks": ["e2"]},
    {"name": "e2", "backend": "vllm", "base_url": "http://e2/v1", "mode": "embedding"},
]


def settings() -> Any:
    data = copy.deepcopy(THREE_MODELS)
    data["models"][0]["fallbacks"] = ["medium"]
    data["models"] += EMBEDDINGS
    data["cache"] = {"enabled": True}
    data["server"] = {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600}
    return settings_from_dict(data)


def embedding(model: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": model,
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }


def upstream(down: set[str], calls: list[str]) -> Callable[[Seen], web.Response]:
    """Every backend answers as itself ("from NAME", or a vector for ``e*``), except those in ``down`` (503);
    ``calls`` gets each backend asked, in order."""

    def handler(request: Seen) -> web.Response:
        if request.method == "GET":
            return web.json_response({"data": []})
        calls.append(request.backend)
        if request.backend in down:
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if request.backend.startswith("e"):
            return web.json_response(embedding(request.backend))
        return web.json_response(chat_reply(request.backend, "from " + request.backend))

    return handler


async def test_a_fallback_s_answer_is_not_cached_under_the_name_asked_for() -> None:
    down = {"small", "e1"}
    calls: list[str] = []
    handler = upstream(down, calls)

    async with gateway_client(settings(), handler) as http:
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="x", http_client=http, max_retries=0)
        ask = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        first = await client.chat.completions.with_raw_response.create(**ask)
        assert first.headers["x-gateway-model"] == "medium"
        vectors = await client.embeddings.with_raw_response.create(model="e1", input="hi", encoding_format="float")
        assert vectors.headers["x-gateway-model"] == "e2"
        await http.gateway.cache.flush()  # type: ignore[attr-defined]
        down.clear()
        calls.clear()
        again = await client.chat.completions.with_raw_response.create(**ask)
        vectors_again = await client.embeddings.with_raw_response.create(
            model="e1", input="hi", encoding_format="float"
        )
    assert calls == ["small", "e1"]  # neither was served from the fallbacks' cached answers
    assert again.headers["x-gateway-cache"] == "miss" and again.headers["x-gateway-model"] == "small"
    assert again.parse().choices[0].message.content == "from small"
    assert vectors_again.headers["x-gateway-model"] == "e1"


async def test_a_route_s_fallback_answer_is_not_cached_either() -> None:
    """The route's first choice failed and the next candidate answered: served, not cached, so the route's
    usual answer comes back once the first choice has recovered (streamed and not)."""
    down = {"medium"}
    calls: list[str] = []
    handler = upstream(down, calls)

    data = copy.deepcopy(THREE_MODELS)
    data["routes"] = {"best": {"models": ["small", "medium"], "policy": "quality"}}  # medium first
    data["cache"] = {"enabled": True}
    data["server"] = {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600}
    data["breaker"] = {"failure_threshold": 100}  # the first choice stays first: the attempt fails, not the plan
    async with gateway_client(settings_from_dict(data), handler) as http:
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="x", http_client=http, max_retries=0)
        ask = {"model": "best", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        first = await client.chat.completions.with_raw_response.create(**ask)
        assert first.headers["x-gateway-model"] == "small" and first.headers["x-gateway-cache"] == "miss"
        await http.gateway.cache.flush()  # type: ignore[attr-defined]
        down.clear()
        calls.clear()
        again = await client.chat.completions.with_raw_response.create(**ask)
        await http.gateway.cache.flush()  # type: ignore[attr-defined]
        third = await client.chat.completions.with_raw_response.create(**ask)
    assert calls == ["medium"]  # the recovered first choice answered; its answer is the one cached
    assert again.headers["x-gateway-cache"] == "miss" and again.headers["x-gateway-model"] == "medium"
    assert third.headers["x-gateway-cache"] == "hit" and third.parse().choices[0].message.content == "from medium"
