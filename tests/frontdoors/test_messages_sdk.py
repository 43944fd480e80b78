"""The real anthropic SDK's Messages API against the gateway (simulated backends) over sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.frontdoors.conftest import Env

ASK_WEATHER = "What is the weather in Paris? use get_weather"
TOOLS: Any = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def client(env: Env, key: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=env.url, api_key=key or env.key_a, max_retries=0)


@pytest.fixture
async def claude(env: Env) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with client(env) as c:
        yield c


async def test_create(env: Env, claude: anthropic.AsyncAnthropic) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="small",
        max_tokens=50,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello"}],
        metadata={"user_id": "u-1"},
        extra_body={"temperature": 0.5},  # this SDK version has no temperature argument; the API has
    )
    message = await raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == "small" and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0
    assert raw.headers["x-gateway-model"] == "small"
    assert message._request_id == raw.headers["x-request-id"]
    row = await env.ledger.one_row(raw.headers["x-request-id"])
    assert row["endpoint"] == "messages" and row["status_code"] == 200 and row["user"] == "u-1"
    assert row["prompt_tokens"] == message.usage.input_tokens
    assert row["completion_tokens"] == message.usage.output_tokens


async def test_max_tokens_and_auto_route(env: Env, claude: anthropic.AsyncAnthropic) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="auto", max_tokens=4, messages=[{"role": "user", "content": "Tell me a long story"}]
    )
    message = await raw.parse()
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 4
    assert raw.headers["x-gateway-route"] == "auto" and message.model == raw.headers["x-gateway-model"]


async def test_stream_helper(env: Env, claude: anthropic.AsyncAnthropic) -> None:
    types: list[str] = []
    async with claude.messages.stream(
        model="small", max_tokens=50, messages=[{"role": "user", "content": "Say hello"}]
    ) as stream:
        async for event in stream:
            types.append(event.type)
        text = await stream.get_final_text()
        final = await stream.get_final_message()
    raw_types = [t for t in types if t not in ("text",)]
    assert raw_types[0] == "message_start" and raw_types[-1] == "message_stop"
    assert raw_types[-2] == "message_delta" and "content_block_start" in raw_types
    assert "content_block_delta" in raw_types and "content_block_stop" in raw_types
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0


async def test_stream_ledger_and_headers(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url, timeout=30) as http:
        async with http.stream(
            "POST",
            "/v1/messages",
            json={"model": "small", "max_tokens": 20, "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
            headers={"x-api-key": env.key_a, "anthropic-version": "2023-06-01"},
        ) as r:
            assert r.status_code == 200 and r.headers["x-gateway-model"] == "small"
            body = (await r.aread()).decode()
    events = [line[7:] for line in body.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    delta = [json.loads(line[6:]) for line in body.splitlines() if '"message_delta"' in line and line[:6] == "data: "]
    row = await env.ledger.one_row(r.headers["x-request-id"])
    assert row["endpoint"] == "messages" and row["stream"] and row["status_code"] == 200
    assert row["completion_tokens"] == delta[0]["usage"]["output_tokens"]


async def test_tool_use_round_trip(env: Env, claude: anthropic.AsyncAnthropic) -> None:
    c = claude
    question: Any = [{"role": "user", "content": ASK_WEATHER}]
    first = await c.messages.create(model="big", max_tokens=200, tools=TOOLS, messages=question)
    assert first.stop_reason == "tool_use"
    use = [b for b in first.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and "city" in use.input and use.id
    turns: Any = [
        *question,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C, sunny"}]},
    ]
    second = await c.messages.create(model="big", max_tokens=200, tools=TOOLS, messages=turns)
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"


async def test_streamed_tool_use(env: Env, claude: anthropic.AsyncAnthropic) -> None:
    question: Any = [{"role": "user", "content": ASK_WEATHER}]
    async with claude.messages.stream(
        model="big", max_tokens=200, tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"}, messages=question
    ) as stream:
        deltas = [e.delta.type async for e in stream if e.type == "content_block_delta"]
        final = await stream.get_final_message()
    assert "input_json_delta" in deltas
    use = [b for b in final.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and "city" in use.input
    assert final.stop_reason == "tool_use"


async def test_stop_sequences(env: Env, claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="small", max_tokens=100, stop_sequences=["the", "a"], messages=[{"role": "user", "content": "Story"}]
    )
    assert message.stop_reason in ("stop_sequence", "end_turn", "max_tokens")
    if message.stop_reason == "stop_sequence":
        assert message.stop_sequence in ("the", "a")


async def test_count_tokens(env: Env, claude: anthropic.AsyncAnthropic) -> None:
    c = claude
    small = await c.messages.count_tokens(model="small", messages=[{"role": "user", "content": "Hi"}])
    big = await c.messages.count_tokens(
        model="auto", system="Be brief.", tools=TOOLS, messages=[{"role": "user", "content": "Hi " * 50}]
    )
    assert 0 < small.input_tokens < big.input_tokens
    message = await c.messages.create(model="small", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert abs(message.usage.input_tokens - small.input_tokens) <= 8  # the gateway's count vs the upstream's
    with pytest.raises(anthropic.NotFoundError) as info:
        await c.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "Hi"}])
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert info.value.request_id == body["request_id"]  # the SDK reads the request-id header
    raw = await c.messages.with_raw_response.count_tokens(model="small", messages=[{"role": "user", "content": "Hi"}])
    assert raw.request_id
    # a body past server.offload_bytes is counted in a thread, to the same figure
    words = await c.messages.count_tokens(model="small", messages=[{"role": "user", "content": "Hi " * 50_000}])
    assert 50_000 <= words.input_tokens - small.input_tokens <= 50_010


async def test_bearer_auth_and_anthropic_errors(env: Env, claude: anthropic.AsyncAnthropic) -> None:
    async with anthropic.AsyncAnthropic(base_url=env.url, auth_token=env.key_b, max_retries=0) as bearer:
        message = await bearer.messages.create(
            model="small", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )
    assert message.content
    with pytest.raises(anthropic.AuthenticationError) as auth:
        async with client(env, "sk-wrong") as wrong:
            await wrong.messages.create(model="small", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    body: Any = auth.value.body
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        await claude.messages.create(
            model="small",
            max_tokens=5,
            messages=[{"role": "user", "content": "Hi"}],
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )
    body = bad.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "web_search_20250305" in body["error"]["message"]
    assert bad.value.request_id == body["request_id"] == bad.value.response.headers["x-request-id"]
    assert auth.value.request_id  # errors carry it too (support tickets, the ledger)
    row = await env.ledger.one_row(bad.value.response.headers["x-request-id"])
    assert row["endpoint"] == "messages" and row["status_code"] == 400


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": "small", "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens"),
        ({"model": "small", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "small", "max_tokens": 5, "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"model": "small", "max_tokens": 5, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]},
            "temperature",
        ),
        (
            {
                "model": "small",
                "max_tokens": 5,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "messages": [{"role": "user", "content": "x"}],
            },
            "thinking",
        ),
    ],
)
async def test_bad_bodies_in_anthropic_shape(env: Env, body: dict[str, Any], needle: str) -> None:
    async with httpx.AsyncClient(base_url=env.url) as http:
        r = await http.post("/v1/messages", json=body, headers={"x-api-key": env.key_a})
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert needle in err["error"]["message"]
