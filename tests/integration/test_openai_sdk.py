"""The real openai SDK against the gateway over real sockets, with simulated backends behind it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app, get_profile
from tests.helpers.servers import free_port, run_asgi_server

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, str]]:
    apps = {
        "small": create_simulator_app(get_profile("fast"), model_name="meta/small", seed=1),
        "big": create_simulator_app(get_profile("fast"), model_name="gpt-4", seed=2),
        "faulty": create_simulator_app(get_profile("fast"), model_name="faulty"),
    }
    with run_asgi_server(apps["small"]) as a, run_asgi_server(apps["big"]) as b, run_asgi_server(apps["faulty"]) as c:
        yield {"small": a, "big": b, "faulty": c}


@pytest.fixture(scope="module")
def gateway_url(sims: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("sdk")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = settings_from_dict(
        {
            "models": [
                {
                    "name": "small",
                    "backend": "vllm",
                    "base_url": sims["small"] + "/v1",
                    "upstream_model": "meta/small",
                    "quality": 6.3,
                    "gpu_hour_usd": 1.0,
                    "tokens_per_second": 1500,
                },
                {
                    "name": "big",
                    "backend": "openai",
                    "base_url": sims["big"] + "/v1",
                    "upstream_model": "gpt-4",
                    "quality": 9.0,
                },
                {
                    "name": "faulty",
                    "backend": "openai",
                    "base_url": sims["faulty"] + "/v1",
                    "upstream_model": "faulty",
                    "timeouts": {"first_byte": 0.5, "total": 2},
                },
                {"name": "dead", "backend": "openai", "base_url": dead, "upstream_model": "x"},
            ],
            "routes": {"auto": {"models": ["small", "big"], "policy": "cost"}},
            "retry": {"max_attempts": 1},
            "server": {"max_body_bytes": 200_000},
            "cache": {"enabled": False},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp}/ledger.db"},
        }
    )
    with run_asgi_server(create_app(settings)) as url:
        yield url


@pytest.fixture
def client(gateway_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)


async def test_models_list_and_retrieve(client: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in client.models.list()]
    assert ids == ["small", "big", "faulty", "dead", "auto"]
    model = await client.models.retrieve("auto")
    assert model.id == "auto"


async def test_chat(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "Say hello"}], max_tokens=7, seed=3
    )
    completion = raw.parse()
    assert completion.model == "small"
    assert completion.usage is not None and completion.usage.completion_tokens == 7
    assert completion.choices[0].finish_reason == "length"
    assert raw.headers["x-gateway-model"] == "small"
    assert raw.headers["x-request-id"]


async def test_auto_route_reports_chosen_model(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    chosen = raw.headers["x-gateway-model"]
    assert chosen in ("small", "big")
    assert raw.headers["x-gateway-policy"] == "cost"
    assert raw.headers["x-gateway-route"] == "auto"
    assert raw.parse().model == chosen
    assert raw.headers["x-gateway-reason"]


async def test_streaming_chat_with_and_without_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="big",
        messages=[{"role": "user", "content": "Count"}],
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    assert all(c.model == "big" for c in chunks)
    stream = await client.chat.completions.create(
        model="big", messages=[{"role": "user", "content": "Count"}], max_tokens=9, stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)


async def test_tool_calls_plain_and_streamed(client: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "What is the weather in Paris? use get_weather"}]
    completion = await client.chat.completions.create(model="big", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"
    stream = await client.chat.completions.create(model="big", messages=messages, tools=TOOLS, stream=True)  # type: ignore[arg-type]
    name, args, finish = "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                name += tc.function.name or "" if tc.function else ""
                args += tc.function.arguments or "" if tc.function else ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and "city" in json.loads(args) and finish == "tool_calls"


async def test_completions_and_logprobs(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(model="small", prompt="Once upon a time", max_tokens=5)
    assert completion.model == "small" and completion.choices[0].text
    stream = await client.completions.create(model="small", prompt="Once", max_tokens=5, stream=True)
    texts = [c.choices[0].text async for c in stream if c.choices]
    assert "".join(texts)
    chat = await client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "x"}], max_tokens=3, logprobs=True, top_logprobs=2, n=2
    )
    assert len(chat.choices) == 2
    assert chat.choices[0].logprobs is not None and chat.choices[0].logprobs.content


async def test_error_classes(client: openai.AsyncOpenAI, sims: dict[str, str]) -> None:
    user: Any = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=user)
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="small", messages=user, max_tokens=-1)
    assert bad.value.body["param"] == "max_tokens"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="small", messages=[])
    with pytest.raises(openai.APIStatusError) as big:
        await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "x" * 300_000}])
    assert big.value.status_code == 413
    with pytest.raises(openai.InternalServerError) as dead:
        await client.chat.completions.create(model="dead", messages=user)
    assert dead.value.status_code == 502
    faults = sims["faulty"] + "/_sim/faults"
    try:
        httpx.post(faults, json={"mode": "error_400", "message": "prompt rejected upstream"})
        with pytest.raises(openai.BadRequestError, match="prompt rejected upstream"):
            await client.chat.completions.create(model="faulty", messages=user)
        httpx.post(faults, json={"mode": "error_429", "retry_after": 7})
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="faulty", messages=user)
        assert limited.value.response.headers.get("retry-after") == "7"
        httpx.post(faults, json={"mode": "hang"})
        with pytest.raises(openai.InternalServerError) as timed_out:
            await client.chat.completions.create(model="faulty", messages=user)
        assert timed_out.value.status_code == 504
    finally:
        httpx.delete(faults)


async def test_health_and_ready(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        ready = await http.get("/ready")
    # one backend up is enough; per-backend detail is for the master key only (tests/hardening/test_upstream_errors.py)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_raw_sse_format(gateway_url: str) -> None:
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            raw = b"".join([c async for c in r.aiter_raw()])
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-2])
