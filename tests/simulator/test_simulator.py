"""Tests of the backend simulator (gateway.simulator)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import re
import statistics
import struct
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from gateway.simulator import PROFILES, SimProfile, create_simulator_app, get_profile
from gateway.simulator.engine import FifoLimiter
from gateway.simulator.faults import parse_fault
from tests.helpers.servers import ServerThread, run_asgi_server, start_simulator_process

USER: Any = [{"role": "user", "content": "Tell me something about request routing."}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}
TIME_TOOL: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@asynccontextmanager
async def asgi(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim", timeout=10) as client:
        yield client


def sdk(base_url: str, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, **kw)


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    raise AssertionError(f"metric {name} {labels} not found")


def sse_events(text: str) -> list[str]:
    return [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]


@pytest.fixture(scope="module")
def fast_url() -> Iterator[str]:
    with run_asgi_server(create_simulator_app("fast", time_scale=1.0)) as url:
        yield url


@pytest.fixture
def fast(fast_url: str) -> Iterator[str]:
    yield fast_url
    httpx.delete(f"{fast_url}/_sim/faults")


# --------------------------------------------------------------------------- profiles


def test_profiles() -> None:
    assert {"llama-2-7b", "llama-2-13b", "gpt-4", "fast"} <= set(PROFILES)
    p7, p13, gpt4 = get_profile("llama-2-7b"), get_profile("llama-2-13b"), get_profile("gpt-4")
    assert p13.per_token_ms >= 1.7 * p7.per_token_ms and p13.ttft_base_ms > p7.ttft_base_ms
    assert p7.max_concurrency == 8 and p13.max_concurrency == 6 and gpt4.max_concurrency >= 256
    assert gpt4.kind == "hosted" and gpt4.context_window == 8192 and p7.context_window == 4096
    assert all(p.embedding_dim == 384 for p in PROFILES.values())
    with pytest.raises(KeyError, match="known profiles"):
        get_profile("nope")
    with pytest.raises(ValueError):
        SimProfile("bad", "m", 1, 0, 1, max_concurrency=0)


# ------------------------------------------------------------------- basic endpoints


async def test_health_models_version() -> None:
    app = create_simulator_app("llama-2-7b", model_name="my-llama")
    async with asgi(app) as c:
        r = await c.get("/health")
        assert r.status_code == 200 and r.content == b""
        models = (await c.get("/v1/models")).json()
        assert models["object"] == "list"
        card = models["data"][0]
        assert card["id"] == "my-llama" and card["object"] == "model"
        assert card["owned_by"] == "vllm" and card["max_model_len"] == 4096
        assert (await c.get("/version")).status_code == 200
        assert (await c.get("/nope")).status_code == 404


async def test_chat_response_shape() -> None:
    app = create_simulator_app("llama-2-7b", time_scale=0.0)
    async with asgi(app) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "meta-llama/Llama-2-7b-chat-hf", "messages": USER, "max_tokens": 12},
        )
        assert r.status_code == 200 and r.headers["x-simulator"].startswith("gateway-simulator/")
        body = r.json()
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert body["model"] == "meta-llama/Llama-2-7b-chat-hf" and isinstance(body["created"], int)
        (choice,) = body["choices"]
        assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
        assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
        usage = body["usage"]
        assert usage["completion_tokens"] == 12
        assert usage["total_tokens"] == usage["prompt_tokens"] + 12
        assert usage["prompt_tokens"] == 3 + 4 + math.ceil(len(USER[0]["content"]) / 4)
        # the profile name is accepted as an alias of the served model name
        r = await c.post("/v1/chat/completions", json={"model": "llama-2-7b", "messages": USER})
        assert r.status_code == 200


async def test_determinism_seed_temperature_n() -> None:
    app = create_simulator_app("fast", time_scale=0.0)
    async with asgi(app) as c:

        async def texts(**kw: Any) -> list[str]:
            r = await c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 30, **kw})
            return [ch["message"]["content"] for ch in r.json()["choices"]]

        assert await texts(seed=1) == await texts(seed=1)
        assert await texts(seed=1) != await texts(seed=2)
        two = await texts(seed=3, n=2)
        assert len(two) == 2 and two[0] != two[1]
        greedy = await texts(temperature=0, n=2, seed=5)
        assert greedy[0] == greedy[1] == (await texts(temperature=0, seed=6))[0]


async def test_max_tokens_ignore_eos_and_stop() -> None:
    app = create_simulator_app("fast", time_scale=0.0)  # natural length ~36-60 tokens
    async with asgi(app) as c:

        async def one(**kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            r = await c.post("/v1/chat/completions", json={"messages": USER, **kw})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0], r.json()["usage"]

        choice, usage = await one(max_completion_tokens=7)
        assert usage["completion_tokens"] == 7 and choice["finish_reason"] == "length"
        choice, usage = await one(max_tokens=1000)
        assert usage["completion_tokens"] < 1000 and choice["finish_reason"] == "stop"
        choice, usage = await one(max_tokens=300, ignore_eos=True)
        assert usage["completion_tokens"] == 300 and choice["finish_reason"] == "length"
        full, _ = await one(max_tokens=300, ignore_eos=True, seed=9)
        cut, usage = await one(max_tokens=300, ignore_eos=True, seed=9, stop=[".", "!", "?"])
        assert cut["finish_reason"] == "stop" and cut["stop_reason"] in (".", "!", "?")
        assert full["message"]["content"].startswith(cut["message"]["content"])
        assert not any(s in cut["message"]["content"] for s in ".!?") and usage["completion_tokens"] < 300


async def test_completions_batch_and_logprobs() -> None:
    app = create_simulator_app("fast", time_scale=0.0)
    async with asgi(app) as c:
        r = await c.post(
            "/v1/completions",
            json={"model": "sim-fast", "prompt": ["Hello", "World"], "max_tokens": 4, "n": 2, "logprobs": 3},
        )
        body = r.json()
        assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
        assert [ch["index"] for ch in body["choices"]] == [0, 1, 2, 3]
        assert body["usage"]["completion_tokens"] == 16
        lp = body["choices"][0]["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 4
        assert "".join(lp["tokens"]) == body["choices"][0]["text"]
        assert all(len(top) == 3 for top in lp["top_logprobs"])
        r = await c.post("/v1/completions", json={"prompt": [1, 2, 3, 4], "max_tokens": 2})
        assert r.json()["usage"]["prompt_tokens"] == 4


@pytest.mark.parametrize(
    ("profile", "payload", "status", "err_type", "fragment"),
    [
        ("fast", {"model": "x", "messages": USER}, 404, "NotFoundError", "The model `x` does not exist."),
        ("fast", {"model": "sim-fast"}, 400, "BadRequestError", "messages"),
        ("fast", {"messages": []}, 400, "BadRequestError", "messages"),
        ("fast", {"messages": USER, "max_tokens": 0}, 400, "BadRequestError", "max_tokens"),
        ("fast", {"messages": USER, "top_logprobs": 2}, 400, "BadRequestError", "logprobs"),
        ("fast", {"messages": USER, "stream_options": {"include_usage": True}}, 400, "BadRequestError", "stream"),
        ("llama-2-7b", {"messages": USER, "max_tokens": 4090}, 400, "BadRequestError", "maximum context length"),
        ("llama-2-13b", {"messages": USER, "tools": [WEATHER_TOOL]}, 400, "BadRequestError", "auto"),
        ("fast", {"messages": USER, "tool_choice": "required"}, 400, "BadRequestError", "tools"),
    ],
)
async def test_validation_errors(
    profile: str, payload: dict[str, Any], status: int, err_type: str, fragment: str
) -> None:
    async with asgi(create_simulator_app(profile, time_scale=0.0)) as c:
        r = await c.post("/v1/chat/completions", json=payload)
        assert r.status_code == status
        err = r.json()["error"]
        assert err["type"] == err_type and err["code"] == status and err["param"] is None
        assert fragment in err["message"]


async def test_invalid_json_body_and_stats() -> None:
    app = create_simulator_app("fast", time_scale=0.0)
    async with asgi(app) as c:
        r = await c.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
        await c.post("/v1/chat/completions", json={"messages": USER})
        stats = (await c.get("/_sim/stats")).json()
        assert stats["requests_received"] == 2 and stats["requests_completed"] == 1
        assert stats["requests_failed"] == 1 and stats["running"] == stats["waiting"] == 0


async def test_tool_choice_rules() -> None:
    async with asgi(create_simulator_app("llama-2-7b", time_scale=0.0)) as c:

        async def ask(text: str, **kw: Any) -> dict[str, Any]:
            msgs = [{"role": "user", "content": text}]
            r = await c.post("/v1/chat/completions", json={"messages": msgs, **kw})
            assert r.status_code == 200, r.text
            choice: dict[str, Any] = r.json()["choices"][0]
            return choice

        tools = [TIME_TOOL, WEATHER_TOOL]
        ch = await ask("What does get_weather say for Paris?", tools=tools)
        assert ch["finish_reason"] == "tool_calls" and ch["message"]["content"] is None
        (call,) = ch["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
        assert call["function"]["name"] == "get_weather"
        args = json.loads(call["function"]["arguments"])
        assert set(args) == {"city", "unit", "days"} and args["unit"] == "celsius"
        assert isinstance(args["city"], str) and isinstance(args["days"], int)
        assert (await ask("Hello there", tools=tools))["finish_reason"] != "tool_calls"
        none = await ask("use get_weather", tools=tools, tool_choice="none")
        assert none["finish_reason"] != "tool_calls"
        req = await ask("Hello there", tools=tools, tool_choice="required")
        assert req["message"]["tool_calls"][0]["function"]["name"] == "get_time"
        named = {"type": "function", "function": {"name": "get_weather"}}
        assert (await ask("hi", tools=tools, tool_choice=named))["finish_reason"] == "tool_calls"
        # after a tool result the model answers in text
        msgs = [
            {"role": "user", "content": "use get_weather"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "1", "content": "sunny"},
        ]
        r = await c.post("/v1/chat/completions", json={"messages": msgs, "tools": tools})
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    # a profile without auto tool choice still honours a named tool choice
    async with asgi(create_simulator_app("llama-2-13b", time_scale=0.0)) as c:
        r = await c.post("/v1/chat/completions", json={"messages": USER, "tools": tools, "tool_choice": named})
        assert r.json()["choices"][0]["finish_reason"] == "tool_calls"


async def test_embeddings() -> None:
    async with asgi(create_simulator_app("llama-2-7b", time_scale=0.0)) as c:
        texts = ["the cat sat on the mat", "the cat sat on a mat", "quarterly revenue report"]
        r = await c.post("/v1/embeddings", json={"model": "llama-2-7b", "input": texts})
        body = r.json()
        assert body["object"] == "list" and body["usage"]["prompt_tokens"] > 0
        vecs = [d["embedding"] for d in body["data"]]
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert all(len(v) == 384 and abs(sum(x * x for x in v) - 1) < 1e-6 for v in vecs)

        def cos(a: list[float], b: list[float]) -> float:
            return sum(x * y for x, y in zip(a, b, strict=True))

        assert cos(vecs[0], vecs[1]) > 0.5 > cos(vecs[0], vecs[2])
        again = (await c.post("/v1/embeddings", json={"input": texts[0]})).json()["data"][0]["embedding"]
        assert again == vecs[0]
        r = await c.post("/v1/embeddings", json={"input": "x", "encoding_format": "base64", "dimensions": 8})
        raw = base64.b64decode(r.json()["data"][0]["embedding"])
        assert len(struct.unpack("<8f", raw)) == 8
        assert (await c.post("/v1/embeddings", json={"input": "x", "dimensions": 999})).status_code == 400


async def test_metrics_exposition() -> None:
    app = create_simulator_app("llama-2-7b", time_scale=0.0)
    async with asgi(app) as c:
        await c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 5})
        await c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 1000})
        text = (await c.get("/metrics")).text
        labels = {"model_name": "meta-llama/Llama-2-7b-chat-hf", "engine": "0"}
        assert metric(text, "vllm:num_requests_running", **labels) == 0
        assert metric(text, "vllm:num_requests_waiting", **labels) == 0
        assert metric(text, "vllm:kv_cache_usage_perc", **labels) == 0
        assert metric(text, "vllm:prompt_tokens_total", **labels) > 0
        assert metric(text, "vllm:generation_tokens_total", **labels) > 5
        assert metric(text, "vllm:request_success_total", finished_reason="length") == 1
        assert metric(text, "vllm:request_success_total", finished_reason="stop") == 1
        assert metric(text, "vllm:time_to_first_token_seconds_count", **labels) == 2
        assert metric(text, "vllm:e2e_request_latency_seconds_count", **labels) == 2


async def test_stream_format_vllm_and_hosted() -> None:
    for profile in ("fast", "gpt-4"):
        async with asgi(create_simulator_app(profile, time_scale=0.0)) as c:
            base = {"messages": USER, "max_tokens": 3, "stream": True}
            r = await c.post("/v1/chat/completions", json=base)
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r.text)
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            contents = [ch["choices"][0]["delta"].get("content") for ch in chunks[1:]]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            assert all(ch["choices"][0]["finish_reason"] is None for ch in chunks[:-1])
            assert not any("usage" in ch for ch in chunks)
            if profile == "fast":  # vLLM: the last token rides with finish_reason
                assert len(contents) == 3 and all(contents)
            else:  # OpenAI: a separate final chunk with an empty delta
                assert len(contents) == 4 and chunks[-1]["choices"][0]["delta"] == {}
            r = await c.post("/v1/chat/completions", json={**base, "stream_options": {"include_usage": True}})
            chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
            if profile == "fast":
                assert not any("usage" in ch for ch in chunks[:-1])
            else:
                assert all(ch["usage"] is None for ch in chunks[:-1])


# ----------------------------------------------------------------- limiter (unit)


async def test_fifo_limiter_order_and_cancellation() -> None:
    lim = FifoLimiter(1)
    order: list[int] = []
    await lim.acquire()

    async def worker(i: int) -> None:
        async with lim.slot():
            order.append(i)

    tasks = [asyncio.create_task(worker(i)) for i in range(4)]
    await asyncio.sleep(0)
    assert lim.running == 1 and lim.waiting == 4
    tasks[1].cancel()
    await asyncio.sleep(0)
    assert lim.waiting == 3
    lim.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 2, 3] and lim.running == 0 and lim.waiting == 0
    # a waiter cancelled right after being handed the slot passes it on
    await lim.acquire()
    t1 = asyncio.create_task(lim.acquire())
    t2 = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    lim.release()
    t1.cancel()
    await asyncio.gather(t1, return_exceptions=True)
    await t2
    assert lim.running == 1 and lim.waiting == 0


# ----------------------------------------------------------------- fault injection


async def test_fault_api_and_error_modes() -> None:
    app = create_simulator_app("fast", time_scale=0.0)
    async with asgi(app) as c:
        chat = {"messages": USER, "max_tokens": 3}
        assert (await c.post("/_sim/faults", json={"mode": "explode"})).status_code == 400
        r = await c.post("/_sim/faults", json={"mode": "error_500", "count": 2})
        assert r.json()["fault"]["mode"] == "error_500"
        for _ in range(2):
            r = await c.post("/v1/chat/completions", json=chat)
            assert r.status_code == 500 and r.json()["error"]["code"] == 500
        assert (await c.post("/v1/chat/completions", json=chat)).status_code == 200
        assert (await c.get("/_sim/faults")).json()["fault"] is None

        await c.post("/_sim/faults", json={"mode": "error_429", "retry_after": 7})
        for _ in range(3):  # no count: until cleared
            r = await c.post("/v1/completions", json={"prompt": "hi"})
            assert r.status_code == 429 and r.headers["retry-after"] == "7"
            assert r.json()["error"]["type"] == "RateLimitError"
        assert (await c.get("/health")).status_code == 200  # only inference endpoints fail
        await c.delete("/_sim/faults")
        assert (await c.post("/v1/completions", json={"prompt": "hi"})).status_code == 200

        await c.post("/_sim/faults", json={"mode": "error_400", "status": 422, "count": 1, "message": "nope"})
        r = await c.post("/v1/embeddings", json={"input": "hi"})
        assert r.status_code == 422 and r.json()["error"] == {
            "message": "nope",
            "type": "BadRequestError",
            "param": None,
            "code": 422,
        }

        await c.post("/_sim/faults", json={"mode": "invalid_json", "count": 2})
        r = await c.post("/v1/chat/completions", json=chat)
        assert r.status_code == 200
        with pytest.raises(ValueError):
            r.json()
        r = await c.post("/v1/chat/completions", json={**chat, "stream": True})
        with pytest.raises(ValueError):
            json.loads(sse_events(r.text)[0])
        stats = (await c.get("/_sim/stats")).json()
        assert stats["faults_injected"] == 8


async def test_initial_fault_and_parse() -> None:
    app = create_simulator_app("fast", time_scale=0.0, faults={"mode": "error_500", "count": 1})
    async with asgi(app) as c:
        assert (await c.post("/v1/chat/completions", json={"messages": USER})).status_code == 500
        assert (await c.post("/v1/chat/completions", json={"messages": USER})).status_code == 200
    assert parse_fault("slow").factor == 10.0
    with pytest.raises(ValueError):
        parse_fault({"mode": "slow", "count": "x"})
    with pytest.raises(ValueError):
        parse_fault({"mode": "slow", "bogus": 1})


# ------------------------------------------------- real socket, real openai SDK


async def test_sdk_chat_completions_n_and_logprobs(fast: str) -> None:
    client = sdk(fast)
    r = await client.chat.completions.create(model="sim-fast", messages=USER, max_tokens=8, n=2, seed=1)
    assert len(r.choices) == 2 and r.usage is not None and r.usage.completion_tokens == 16
    assert all(ch.message.content and ch.finish_reason == "length" for ch in r.choices)
    r = await client.chat.completions.create(
        model="sim-fast", messages=USER, max_tokens=4, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
    assert content is not None and len(content) == 4
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in content)
    comp = await client.completions.create(model="sim-fast", prompt="Once upon a time", max_tokens=5)
    assert comp.object == "text_completion" and comp.choices[0].finish_reason == "length"
    assert comp.usage is not None and comp.usage.completion_tokens == 5
    models = await client.models.list()
    assert [m.id for m in models.data] == ["sim-fast"]
    emb = await client.embeddings.create(model="sim-fast", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    await client.close()


async def test_sdk_streaming_usage(fast: str) -> None:
    client = sdk(fast)
    plain = await client.chat.completions.create(model="sim-fast", messages=USER, max_tokens=6, seed=4)
    stream = await client.chat.completions.create(model="sim-fast", messages=USER, max_tokens=6, seed=4, stream=True)
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length" and all(c.usage is None for c in chunks)
    stream = await client.chat.completions.create(
        model="sim-fast",
        messages=USER,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    comp = await client.completions.create(model="sim-fast", prompt="Hi", max_tokens=3, stream=True)
    parts = [c async for c in comp]
    assert len(parts) == 3 and parts[-1].choices[0].finish_reason == "length"
    await client.close()


async def test_sdk_tool_calls(fast: str) -> None:
    client = sdk(fast)
    msgs: Any = [{"role": "user", "content": "Please call get_weather for Oslo"}]
    r = await client.chat.completions.create(model="sim-fast", messages=msgs, tools=[WEATHER_TOOL])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    expected_args = json.loads(call.function.arguments)  # type: ignore[union-attr]

    stream = await client.chat.completions.create(model="sim-fast", messages=msgs, tools=[WEATHER_TOOL], stream=True)
    name, args, ids, finish = "", "", set(), None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            assert tc.index == 0
            if tc.id:
                ids.add(tc.id)
            if tc.function and tc.function.name:
                name += tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and len(ids) == 1 and finish == "tool_calls"
    assert json.loads(args) == expected_args
    await client.close()


async def test_concurrency_queue_shows_in_metrics() -> None:
    app = create_simulator_app("llama-2-7b", time_scale=0.1, max_concurrency=1)
    with run_asgi_server(app) as url:
        client = sdk(url)
        body: Any = {"model": "meta-llama/Llama-2-7b-chat-hf", "messages": USER}
        tasks = [
            asyncio.create_task(client.chat.completions.create(**body, max_tokens=60, extra_body={"ignore_eos": True}))
            for _ in range(3)
        ]
        seen_waiting = 0.0
        async with httpx.AsyncClient(base_url=url) as h:
            for _ in range(200):
                text = (await h.get("/metrics")).text
                running = metric(text, "vllm:num_requests_running")
                waiting = metric(text, "vllm:num_requests_waiting")
                assert running <= 1
                if running == 1 and waiting == 2:
                    seen_waiting = waiting
                    assert metric(text, "vllm:kv_cache_usage_perc") == 1.0
                    break
                await asyncio.sleep(0.01)
            results = await asyncio.gather(*tasks)
            stats = (await h.get("/_sim/stats")).json()
        assert seen_waiting == 2
        assert all(r.usage is not None and r.usage.completion_tokens == 60 for r in results)
        assert stats["requests_completed"] == 3 and stats["running"] == stats["waiting"] == 0
        await client.close()


async def test_client_disconnect_cancels_running_and_waiting() -> None:
    app = create_simulator_app("llama-2-7b", time_scale=1.0, max_concurrency=1)
    with run_asgi_server(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as h:
            body = {"messages": USER, "max_tokens": 500, "ignore_eos": True}
            running = asyncio.create_task(h.post("/v1/chat/completions", json={**body, "stream": True}))
            await asyncio.sleep(0.2)
            waiting = asyncio.create_task(h.post("/v1/chat/completions", json=body))
            stats: dict[str, Any] = {}
            for _ in range(100):
                stats = (await h.get("/_sim/stats")).json()
                if stats["running"] == 1 and stats["waiting"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert stats["running"] == 1 and stats["waiting"] == 1
            started = time.monotonic()
            waiting.cancel()
            running.cancel()
            await asyncio.gather(running, waiting, return_exceptions=True)
            for _ in range(100):
                stats = (await h.get("/_sim/stats")).json()
                if stats["requests_cancelled"] == 2:
                    break
                await asyncio.sleep(0.01)
            assert stats["requests_cancelled"] == 2 and stats["running"] == stats["waiting"] == 0
            assert time.monotonic() - started < 1.0


async def _token_gap(profile: str) -> float:
    """Median time between streamed tokens (robust to a scheduling stall or two)."""
    app = create_simulator_app(profile, time_scale=0.5)
    with run_asgi_server(app) as url:
        client = sdk(url)
        stream = await client.chat.completions.create(
            model=app.state.sim.model_name,
            messages=USER,
            max_tokens=16,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        stamps = [time.monotonic() async for c in stream if c.choices and c.choices[0].delta.content]
        await client.close()
    assert len(stamps) == 16
    return statistics.median(b - a for a, b in itertools.pairwise(stamps))


async def test_timing_13b_slower_per_token_than_7b() -> None:
    gap7 = await _token_gap("llama-2-7b")  # ~11 ms at time_scale 0.5
    gap13 = await _token_gap("llama-2-13b")  # ~20 ms
    assert 0.005 < gap7 < 0.1
    assert gap13 > 1.3 * gap7, (gap7, gap13)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_fault_reset_closes_connection(loop: str) -> None:
    app = create_simulator_app("fast", faults={"mode": "reset", "count": 2})
    with ServerThread(app, loop=loop) as url:
        async with httpx.AsyncClient(base_url=url) as h:
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await h.post("/v1/chat/completions", json={"messages": USER})
        client = sdk(url)
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="sim-fast", messages=USER)
        r = await client.chat.completions.create(model="sim-fast", messages=USER, max_tokens=2)
        assert r.choices[0].message.content
        await client.close()


async def test_fault_hang_until_client_gives_up(fast: str) -> None:
    async with httpx.AsyncClient(base_url=fast) as h:
        await h.post("/_sim/faults", json={"mode": "hang", "count": 1})
        before = (await h.get("/_sim/stats")).json()["requests_cancelled"]
        with pytest.raises(httpx.ReadTimeout):
            await h.post("/v1/chat/completions", json={"messages": USER}, timeout=0.3)
        for _ in range(100):
            if (await h.get("/_sim/stats")).json()["requests_cancelled"] == before + 1:
                break
            await asyncio.sleep(0.01)
        assert (await h.get("/_sim/stats")).json()["requests_cancelled"] == before + 1


async def test_fault_cut_stream(fast: str) -> None:
    async with httpx.AsyncClient(base_url=fast) as h:
        await h.post("/_sim/faults", json={"mode": "cut_stream", "after_chunks": 2})
    client = sdk(fast)
    got: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        stream = await client.chat.completions.create(model="sim-fast", messages=USER, max_tokens=20, stream=True)
        async for chunk in stream:
            got.append(chunk)
    assert 1 <= len(got) <= 3 and all(c.choices[0].finish_reason is None for c in got)
    async with httpx.AsyncClient(base_url=fast) as h:  # non-streaming: a truncated body
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await h.post("/v1/chat/completions", json={"messages": USER})
    await client.close()


async def test_fault_no_done(fast: str) -> None:
    async with httpx.AsyncClient(base_url=fast) as h:
        await h.post("/_sim/faults", json={"mode": "no_done", "count": 1, "hold_s": 0.5})
        started = time.monotonic()
        r = await h.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3, "stream": True})
    events = sse_events(r.text)
    assert "[DONE]" not in events and '"finish_reason":"length"' in events[-1]
    assert time.monotonic() - started >= 0.45


async def test_fault_slow() -> None:
    app = create_simulator_app("llama-2-7b", time_scale=0.05)
    body = {"messages": USER, "max_tokens": 20, "ignore_eos": True}
    with run_asgi_server(app) as url:
        async with httpx.AsyncClient(base_url=url) as h:
            t0 = time.monotonic()
            await h.post("/v1/chat/completions", json=body)
            normal = time.monotonic() - t0
            await h.post("/_sim/faults", json={"mode": "slow", "count": 1})
            t0 = time.monotonic()
            r = await h.post("/v1/chat/completions", json=body)
            slow = time.monotonic() - t0
    assert r.status_code == 200 and slow > 4 * normal


def test_simulator_process_can_be_killed() -> None:
    sim = start_simulator_process("fast", model_name="proc-model")
    try:
        r = httpx.post(f"{sim.base_url}/v1/chat/completions", json={"model": "proc-model", "messages": USER})
        assert r.status_code == 200 and r.json()["model"] == "proc-model"
        sim.kill()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{sim.base_url}/health", timeout=1)
    finally:
        sim.stop()
