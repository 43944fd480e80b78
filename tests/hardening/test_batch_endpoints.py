"""/v1/embeddings and /v1/completions as a demanding user of the openai SDK uses them (audit findings).

- ``echo`` with ``max_tokens: 0`` (a prompt's log probabilities, nothing generated: vLLM's and the legacy API's
  way) was refused with a 400 before reaching the upstream.
- A budgeted key's batch of short inputs was reserved less than it bills (each input gets its model's special
  tokens; a byte-fallback tokenizer spells an unknown character byte by byte): the upstream was paid and the answer
  refused with a 402.
- Per-request constraints (``x-gateway-max-cost-usd``, ``x-gateway-policy``) were ignored on embeddings; a route's
  name there was "does not exist" though ``/v1/models`` lists it; a cached embeddings answer got a chat id.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import openai
import pytest
from aiohttp import web

from gateway.auth.admission import ReserveEstimator
from gateway.config import settings_from_dict
from gateway.context import RequestContext
from tests.gateway.conftest import THREE_MODELS, gateway_client
from tests.helpers.upstream import Seen

EMBEDDING = {
    "name": "emb",
    "backend": "openai",
    "base_url": "http://emb/v1",
    "mode": "embedding",
    "input_cost_per_token": "0.000001",
    "output_cost_per_token": "0",
}


def settings() -> Any:
    data = copy.deepcopy(THREE_MODELS)
    data["models"].append(EMBEDDING)
    data["routes"] = {"auto": {"models": ["small", "medium"]}}
    data["cache"] = {"enabled": True}
    data["server"] = {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600}
    return settings_from_dict(data)


def upstream(calls: list[dict[str, Any]]) -> Callable[[Seen], web.Response]:
    def handle(request: Seen) -> web.Response:
        if request.method == "GET":
            return web.json_response({"data": []})
        body = request.json()
        calls.append(body)
        if request.backend == "emb":
            vectors = [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]
            usage = {"prompt_tokens": 3, "total_tokens": 3}
            return web.json_response({"id": "embd-1", "object": "list", "data": vectors, "model": "x", "usage": usage})
        text = body["prompt"] if body.get("echo") else ""
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        usage = {"prompt_tokens": 6, "completion_tokens": 0, "total_tokens": 6}
        return web.json_response(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": "x",
                "choices": [choice],
                "usage": usage,
            }
        )

    return handle


def client_of(http: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://gw/v1", api_key="x", http_client=http, max_retries=0)


async def test_echo_with_max_tokens_0_reaches_the_upstream() -> None:
    calls: list[dict[str, Any]] = []
    async with gateway_client(settings(), upstream(calls)) as http:
        out = await client_of(http).completions.create(
            model="small", prompt="The capital of France is Paris", echo=True, logprobs=1, max_tokens=0
        )
    assert out.choices[0].text == "The capital of France is Paris"
    assert calls[0]["max_tokens"] == 0


@pytest.mark.parametrize(
    ("endpoint", "body", "billed"),
    [
        ("embeddings", {"input": ["cat"] * 600}, 3 * 600),  # [CLS] cat [SEP]
        ("embeddings", {"input": ["a", "b", "c"]}, 3 * 3),
        ("completions", {"prompt": ["a"] * 32, "max_tokens": 1}, 2 * 32 + 32),  # BOS a, and one token each
        ("embeddings", {"input": "猫" * 100}, 3 * 100 + 2),  # Llama-2 spells an unknown character byte by byte
    ],
)
def test_the_reserve_bounds_a_batch_of_short_inputs(endpoint: str, body: dict[str, Any], billed: int) -> None:
    price = {"input_cost_per_token": "0.000001", "output_cost_per_token": "0.000001"}
    model = {"name": "m", "backend": "openai", "base_url": "http://m/v1", **price}
    if endpoint == "embeddings":
        model["mode"] = "embedding"
    estimator = ReserveEstimator(settings_from_dict({"models": [model]}))
    ctx = RequestContext(request_id="r", endpoint=endpoint, body={"model": "m", **body}, requested_model="m")  # type: ignore[arg-type]
    usd, tokens = estimator.reserve(ctx)
    assert tokens >= billed and usd >= billed * Decimal("0.000001")


async def test_embeddings_honour_the_request_s_constraints() -> None:
    calls: list[dict[str, Any]] = []
    async with gateway_client(settings(), upstream(calls)) as http:
        client = client_of(http)
        with pytest.raises(openai.BadRequestError) as cost:
            await client.embeddings.create(
                model="emb", input="hi", extra_headers={"x-gateway-max-cost-usd": "0.0000000001"}
            )
        with pytest.raises(openai.BadRequestError) as policy:
            await client.embeddings.create(model="emb", input="hi", extra_headers={"x-gateway-policy": "no-such"})
        with pytest.raises(openai.BadRequestError) as route:
            await client.embeddings.create(model="auto", input="hi")
        ok = await client.embeddings.with_raw_response.create(
            model="emb", input="hi", encoding_format="float", extra_headers={"x-gateway-max-cost-usd": "0.01"}
        )
    assert cost.value.code == "no_candidate_satisfies_constraints"
    assert policy.value.code == "unknown_policy"
    assert route.value.code == "model_not_embedding" and "route" in route.value.message
    assert ok.http_response.status_code == 200 and len(calls) == 1


async def test_a_cached_embeddings_answer_is_served_as_it_is() -> None:
    calls: list[dict[str, Any]] = []
    async with gateway_client(settings(), upstream(calls)) as http:
        client = client_of(http)
        first = await client.embeddings.with_raw_response.create(model="emb", input="hi", encoding_format="float")
        await http.gateway.cache.flush()  # type: ignore[attr-defined]
        again = await client.embeddings.with_raw_response.create(model="emb", input="hi", encoding_format="float")
    assert again.headers["x-gateway-cache"] == "hit" and len(calls) == 1
    assert again.http_response.json()["id"] == first.http_response.json()["id"] == "embd-1"
