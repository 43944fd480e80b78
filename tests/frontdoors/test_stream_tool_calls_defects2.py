"""Parallel tool calls whose streamed deltas interleave (the chat format allows: both calls' ids and names, then
their arguments by turns) are rendered as one Anthropic ``tool_use`` block / one Responses ``function_call`` item
per call, each with its whole arguments, in an event sequence the real SDKs accumulate; one call after the other
still streams its arguments as they arrive."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.frontdoors.chunks import ToolDelta
from gateway.frontdoors.toolcalls import Step, ToolCallOrder
from tests.frontdoors.event_order import assert_blocks_in_order, assert_items_in_order
from tests.frontdoors.scripted_upstream import Scripted, scripted_gateway

TOOLS: Any = [
    {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}},
]
FUNCTIONS: Any = [
    {"type": "function", "name": t["name"], "parameters": t["input_schema"], "strict": False} for t in TOOLS
]
#: script -> the calls the answer holds, in order: (id, name, arguments)
EXPECTED = {
    "interleaved": [
        ("call_paris", "get_weather", {"city": "Paris"}),
        ("call_rome", "get_time", {"zone": "Europe/Rome"}),
    ],
    "interleaved in chunks": [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_time", {"zone": "UTC"}),
        ("call_c", "get_weather", {"city": "Oslo"}),
    ],
    "sequential": [("call_1", "get_weather", {"city": "Paris"}), ("call_2", "get_weather", {"city": "Rome"})],
}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    with scripted_gateway(tmp_path_factory.mktemp("tool-deltas")) as env:
        yield env


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


@pytest.mark.parametrize("script", list(EXPECTED))
async def test_messages_stream_one_tool_use_block_per_call(up: Scripted, script: str) -> None:
    key = up.key()
    async with anthropic.AsyncAnthropic(base_url=up.url, api_key=key, max_retries=0) as claude:
        async with claude.messages.stream(
            model="m", max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": script}]
        ) as stream:
            events = [e async for e in stream]
            final = await stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == EXPECTED[script]
    assert final.stop_reason == "tool_use"
    assert_blocks_in_order(events, len(final.content))
    if script == "interleaved in chunks":
        assert final.content[0].type == "text" and final.content[0].text == "Checking."


async def test_messages_stream_sequential_calls_stream_incrementally(up: Scripted) -> None:
    """One call after the other: each fragment goes out as it arrives (two deltas per call, as the upstream sent)."""
    async with httpx.AsyncClient(base_url=up.url, timeout=30) as http:
        r = await http.post(
            "/v1/messages",
            json={
                "model": "m",
                "max_tokens": 100,
                "stream": True,
                "tools": TOOLS,
                "messages": [{"role": "user", "content": "sequential"}],
            },
            headers={"x-api-key": up.key()},
        )
    deltas = [(d["index"], d["delta"]["partial_json"]) for n, d in _sse(r.text) if n == "content_block_delta"]
    assert deltas == [(0, '{"city":'), (0, ' "Paris"}'), (1, '{"city":'), (1, ' "Rome"}')]


@pytest.mark.parametrize("script", list(EXPECTED))
async def test_responses_stream_one_function_call_item_per_call(up: Scripted, script: str) -> None:
    key = up.key()
    async with openai.AsyncOpenAI(base_url=up.url + "/v1", api_key=key, max_retries=0) as client:
        async with client.responses.stream(model="m", input=script, tools=FUNCTIONS, store=False) as stream:
            events = [e async for e in stream]
            final = await stream.get_final_response()
        raw = await client.responses.create(model="m", input=script, tools=FUNCTIONS, store=False, stream=True)
        raw_events = [e async for e in raw]
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == EXPECTED[script]
    assert all(c.status == "completed" for c in calls)
    for stream_events in (events, raw_events):
        completed = [e for e in stream_events if e.type == "response.completed"][0].response
        output = completed.output
        assert [(o.type, getattr(o, "call_id", None)) for o in output] == [
            (o.type, getattr(o, "call_id", None)) for o in final.output
        ]
        assert_items_in_order(stream_events, len(output))
        for e in stream_events:  # what each call's done events carry is the call as the response has it
            if e.type == "response.function_call_arguments.done":
                item = output[e.output_index]
                assert item.type == "function_call" and e.arguments == item.arguments and e.item_id == item.id
            elif e.type == "response.output_item.done" and e.item.type == "function_call":
                whole = output[e.output_index].to_dict()
                assert e.item.to_dict() == {k: v for k, v in whole.items() if k != "parsed_arguments"}


async def test_responses_stream_sequential_calls_stream_incrementally(up: Scripted) -> None:
    async with openai.AsyncOpenAI(base_url=up.url + "/v1", api_key=up.key(), max_retries=0) as client:
        stream = await client.responses.create(model="m", input="sequential", tools=FUNCTIONS, store=False, stream=True)
        deltas = [(e.output_index, e.delta) async for e in stream if e.type == "response.function_call_arguments.delta"]
    assert deltas == [(0, '{"city":'), (0, ' "Paris"}'), (1, '{"city":'), (1, ' "Rome"}')]


def test_tool_call_order_holds_and_releases() -> None:
    """The ordering alone: a held call goes out whole once the open one is complete, text interrupts the open call,
    whitespace after a complete call is dropped, and what is still held goes out at the end."""
    order = ToolCallOrder()

    def steps(out: list[Step]) -> list[tuple[str, int, str]]:
        return [(s.kind, s.call.index, s.arguments) for s in out]

    assert steps(order.feed(ToolDelta(0, "a", "f", '{"x":'))) == [("start", 0, ""), ("arguments", 0, '{"x":')]
    assert steps(order.feed(ToolDelta(1, "b", "g", '{"y": 2}'))) == []  # call 0 is still arriving: held
    assert steps(order.feed(ToolDelta(0, None, None, " 1}"))) == [
        ("arguments", 0, " 1}"),
        ("stop", 0, ""),
        ("start", 1, ""),
        ("arguments", 1, '{"y": 2}'),
    ]
    assert steps(order.feed(ToolDelta(0, None, None, "\n"))) == []  # after a complete value: nothing to add
    assert steps(order.feed(ToolDelta(2, "c", "h", "{"))) == [("stop", 1, ""), ("start", 2, ""), ("arguments", 2, "{")]
    assert steps(order.feed(ToolDelta(3, "d", "h", "{}"))) == []  # held behind call 2
    assert steps(order.interrupt()) == [("stop", 2, "")]  # text: call 2 ends as it is
    assert steps(order.finish()) == [("start", 3, ""), ("arguments", 3, "{}"), ("stop", 3, "")]
