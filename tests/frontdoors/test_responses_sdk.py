"""The real openai SDK's Responses API against the gateway (simulated backends) over sockets."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.frontdoors.conftest import WEATHER_TOOL, Env

ASK_WEATHER = "What is the weather in Paris? use get_weather"
TOOLS: Any = [WEATHER_TOOL]
CHOICE: Any = {"type": "function", "name": "get_weather"}


def client(env: Env, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=env.url + "/v1", api_key=key or env.key_a, max_retries=0)


async def test_create_with_string_input(env: Env) -> None:
    raw = await client(env).responses.with_raw_response.create(model="small", input="Say hello", store=False)
    response = raw.parse()
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.model == "small"
    assert response.output_text and response.output[0].type == "message"
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert raw.headers["x-gateway-model"] == "small"
    row = await env.ledger.one_row(raw.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["status_code"] == 200 and row["chosen_model"] == "small"
    assert row["prompt_tokens"] == response.usage.input_tokens
    assert row["completion_tokens"] == response.usage.output_tokens


async def test_items_instructions_and_limits(env: Env) -> None:
    items: Any = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "user", "content": "Tell me a long story"},
    ]
    response = await client(env).responses.create(
        model="auto",
        instructions="Be brief.",
        input=items,
        max_output_tokens=5,
        temperature=0.2,
        top_p=0.9,
        metadata={"team": "a"},
        store=False,
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 5
    assert response.metadata == {"team": "a"} and response.instructions == "Be brief."
    assert response.model in ("small", "big")


async def test_auto_route_headers(env: Env) -> None:
    raw = await client(env).responses.with_raw_response.create(model="auto", input="Hi", store=False)
    assert raw.headers["x-gateway-route"] == "auto" and raw.headers["x-gateway-policy"] == "cost"
    assert raw.parse().model == raw.headers["x-gateway-model"]


async def test_stream_helper_events_in_order(env: Env) -> None:
    types: list[str] = []
    text = ""
    async with client(env).responses.stream(model="small", input="Say hello", store=False) as stream:
        async for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = await stream.get_final_response()
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert "response.output_text.delta" in types
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == text and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens > 0


async def test_stream_headers_and_ledger(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url, timeout=30) as http:
        async with http.stream(
            "POST",
            "/v1/responses",
            json={"model": "small", "input": "Hi", "stream": True, "store": False},
            headers={"authorization": f"Bearer {env.key_a}"},
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-gateway-model"] == "small"
            body = (await r.aread()).decode()
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    completed = events[-1]["response"]
    row = await env.ledger.one_row(r.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["stream"] and row["status_code"] == 200
    assert row["completion_tokens"] == completed["usage"]["output_tokens"]


async def test_function_call_round_trip(env: Env) -> None:
    c = client(env)
    first = await c.responses.create(model="big", input=ASK_WEATHER, tools=TOOLS, store=False)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert "city" in json.loads(calls[0].arguments)
    follow_up: list[Any] = [
        {"role": "user", "content": ASK_WEATHER},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temp_c": 21}'},
    ]
    second = await c.responses.create(model="big", input=follow_up, tools=TOOLS, store=False)
    assert second.status == "completed" and second.output_text
    assert all(item.type == "message" for item in second.output)


async def test_function_call_output_continues_a_stored_response(env: Env) -> None:
    """The Responses API's own tool loop: the output alone, after ``previous_response_id``; an output that
    answers no call (in the input or the stored conversation) is a 400 before any backend is called."""
    c = client(env)
    first = await c.responses.create(model="big", input=ASK_WEATHER, tools=TOOLS)
    call = next(item for item in first.output if item.type == "function_call")
    output: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}]
    second = await c.responses.create(model="big", input=output, tools=TOOLS, previous_response_id=first.id)
    assert second.status == "completed" and second.output_text
    orphan: Any = [{"type": "function_call_output", "call_id": "call_nobody_made", "output": "21"}]
    for previous in (first.id, None):
        with pytest.raises(openai.BadRequestError) as info:
            await c.responses.create(model="big", input=orphan, tools=TOOLS, previous_response_id=previous)
        assert "call_nobody_made" in info.value.message and info.value.param == "input"


async def test_streamed_function_call(env: Env) -> None:
    types: list[str] = []
    args = ""
    async with client(env).responses.stream(
        model="big",
        input=ASK_WEATHER,
        tools=TOOLS,
        tool_choice=CHOICE,
        store=False,
    ) as stream:
        async for event in stream:
            types.append(event.type)
            if event.type == "response.function_call_arguments.delta":
                args += event.delta
        final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in types
    assert "response.function_call_arguments.done" in types
    call = [item for item in final.output if item.type == "function_call"][0]
    assert call.name == "get_weather" and call.arguments == args and "city" in json.loads(args)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"input": [{"type": "file_search_call", "id": "x"}]}, "input[0].type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
async def test_unsupported_parts_are_400_naming_the_field(env: Env, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client(env).responses.create(**{"model": "small", "input": "Hi", **extra})
    assert info.value.status_code == 400
    body: Any = info.value.body
    assert body["param"] == param, body
    row = await env.ledger.one_row(info.value.response.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["status_code"] == 400


async def test_bad_body_is_openai_error(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url) as http:
        r = await http.post("/v1/responses", content=b"{not json", headers={"authorization": f"Bearer {env.key_a}"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = await http.post("/v1/responses", json={"model": "small", "input": "x"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
