"""Defects a review of the front doors found, each shown with the real SDKs over sockets against the scripted upstream
(which records the chat bodies it gets):

1. a Responses function tool without ``strict`` whose parameters cannot be made strict without changing their meaning
   (a map: pydantic's ``dict[str, X]``, an object with ``additionalProperties`` other than false, or without
   ``properties``) goes upstream with ``strict: false`` and its schema unchanged (it was closed to ``{}``); a schema
   that can be made strict is normalized into every subschema (``type: ["object", "null"]`` too), and a field made
   required loses its ``default``;
2. text arriving while a tool call's arguments are incomplete no longer cuts the call: it is held until the call is
   complete (or the stream ends); whitespace between calls makes no text block;
3. Messages: a call whose first delta has an id and no name gets its name (the block starts once it is known);
4. Messages: the upstream's ``prompt_tokens_details.cache_write_tokens`` are ``cache_creation_input_tokens``;
5. two calls with the same ``index`` and different ids stay two calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel

from gateway.frontdoors import strict as st
from tests.frontdoors.event_order import assert_blocks_in_order, assert_items_in_order
from tests.frontdoors.scripted_upstream import END_CALLS, ROLE, STREAMS, Scripted, call, calls, chunk, scripted_gateway

#: The reviewer's scripts (prompt -> the chat chunks the upstream streams).
SCRIPTS: dict[str, list[dict[str, Any]]] = {
    # text, two calls interleaved, then text while call 0 holds '{"a":', then the rest of call 0, then a third call
    "review text mid call": [
        ROLE,
        chunk({"content": "Let me check."}),
        calls(call(0, "", "c0", "f"), call(1, "", "c1", "g")),
        calls(call(1, '{"b":')),
        calls(call(0, '{"a":')),
        calls(call(1, "2}")),
        chunk({"content": " and "}),
        calls(call(0, "1}")),
        calls(call(2, '{"c":3}', "c2", "h")),
        *END_CALLS,
    ],
    # a single newline between a call's fragments (vLLM's hermes parser can send it), then another call
    "review newline mid call": [
        ROLE,
        calls(call(0, '{"a": 1', "c0", "f")),
        chunk({"content": "\n"}),
        calls(call(0, "}")),
        calls(call(1, '{"b": 2}', "c1", "g")),
        *END_CALLS,
    ],
    # the call's name arrives with its arguments, after a first delta with the id only
    "review late name": [
        ROLE,
        calls({"index": 0, "id": "c0", "type": "function", "function": {"arguments": ""}}),
        calls({"index": 0, "function": {"name": "f", "arguments": '{"a":1}'}}),
        *END_CALLS,
    ],
    # a call whose arguments never parse, text meanwhile: the text goes out after the call, at the end
    "review text after broken call": [
        ROLE,
        calls(call(0, '{"a": 1', "c0", "f")),
        chunk({"content": "done"}),
        *END_CALLS,
    ],
    # two calls on the same index (an upstream bug seen in the wild)
    "review same index": [
        ROLE,
        calls(call(0, '{"a":1}', "c0", "f")),
        calls(call(0, '{"b":2}', "c1", "g")),
        *END_CALLS,
    ],
}
#: script -> (text blocks' text joined, the calls: (id, name, arguments))
EXPECTED: dict[str, tuple[str, list[tuple[str, str, Any]]]] = {
    "review text mid call": (
        "Let me check. and ",
        [("c0", "f", {"a": 1}), ("c1", "g", {"b": 2}), ("c2", "h", {"c": 3})],
    ),
    "review newline mid call": ("", [("c0", "f", {"a": 1}), ("c1", "g", {"b": 2})]),
    "review late name": ("", [("c0", "f", {"a": 1})]),
    "review same index": ("", [("c0", "f", {"a": 1}), ("c1", "g", {"b": 2})]),
}
TOOLS: Any = [{"name": n, "input_schema": {"type": "object", "properties": {}}} for n in "fgh"]
FUNCTIONS: Any = [
    {"type": "function", "name": n, "parameters": {"type": "object", "properties": {}}, "strict": False} for n in "fgh"
]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    STREAMS.update(SCRIPTS)
    try:
        with scripted_gateway(tmp_path_factory.mktemp("review-fixes")) as env:
            yield env
    finally:
        for name in SCRIPTS:
            STREAMS.pop(name, None)


# -- 1. strict by default, where the schema can be made strict ----------------------------------------------------


class Item(BaseModel):
    sku: str
    qty: int = 1


class Order(BaseModel):
    customer: str
    note: str | None = None
    tags: dict[str, str] = {}
    extra: dict[str, Any]
    items: list[Item]
    by_sku: dict[str, Item] = {}


class Where(BaseModel):
    lat: float
    lon: float | None = None


class Trip(BaseModel):
    city: str
    note: str | None = None
    where: Where | None = None
    stops: list[Where]


#: Not strict-able: each has a map (or an open object) somewhere; sent with ``strict: false``, unchanged.
MAPS: dict[str, Any] = {
    "pydantic dicts": Order.model_json_schema(),
    "dict of str": {
        "type": "object",
        "properties": {"tags": {"type": "object", "additionalProperties": {"type": "string"}}},
    },
    "additionalProperties true": {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "additionalProperties": True,
    },
    "open object in a list": {
        "type": "object",
        "properties": {"rows": {"type": "array", "items": {"type": "object"}}},
    },
    "nullable map": {
        "type": "object",
        "properties": {"m": {"type": ["object", "null"], "additionalProperties": {"type": "integer"}}},
    },
}


@pytest.mark.parametrize("name", list(MAPS))
async def test_responses_tool_with_a_map_goes_non_strict_and_unchanged(up: Scripted, name: str) -> None:
    prompt = f"strict map {name}"
    tool: Any = {"type": "function", "name": "place", "parameters": MAPS[name]}
    async with up.openai_client() as client:
        response = await client.responses.create(model="m", input=prompt, tools=[tool], store=False)
    (sent,) = up.bodies_for(prompt)
    fn = sent["tools"][0]["function"]
    assert fn["strict"] is False
    assert fn["parameters"] == MAPS[name]  # the value types kept: a strict upstream could only produce {}
    assert response.tools[0].type == "function" and response.tools[0].strict is False  # echoed as applied


async def test_responses_strict_schema_as_openai_python_makes_it(up: Scripted) -> None:
    """A pydantic model without maps: the schema sent is what openai-python's own ``to_strict_json_schema`` makes
    (``$defs`` closed, every field required, ``default: null`` dropped)."""
    async with up.openai_client() as client:
        tool: Any = {"type": "function", "name": "trip", "parameters": Trip.model_json_schema()}
        response = await client.responses.create(model="m", input="strict trip", tools=[tool], store=False)
    (sent,) = up.bodies_for("strict trip")
    fn = sent["tools"][0]["function"]
    assert fn["strict"] is True and response.tools[0].type == "function" and response.tools[0].strict is True
    assert fn["parameters"] == to_strict_json_schema(Trip)


async def test_responses_strict_schema_drops_defaults_and_closes_nullable_objects(up: Scripted) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "units": {"type": "string", "enum": ["c", "f"], "default": "c"},
            "where": {"type": ["object", "null"], "properties": {"lat": {"type": "number", "default": 0}}},
            "kind": {"oneOf": [{"type": "object", "properties": {"x": {"type": "integer"}}}, {"type": "null"}]},
        },
        "required": ["city"],
    }
    async with up.openai_client() as client:
        tool: Any = {"type": "function", "name": "f", "parameters": schema}
        await client.responses.create(model="m", input="strict defaults", tools=[tool], store=False)
    (sent,) = up.bodies_for("strict defaults")
    fn = sent["tools"][0]["function"]
    closed = {"required": ["x"], "additionalProperties": False}
    assert fn["strict"] is True
    assert fn["parameters"] == {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "units": {"type": "string", "enum": ["c", "f"]},  # required now: its default would never apply
            "where": {
                "type": ["object", "null"],
                "properties": {"lat": {"type": "number"}},
                "required": ["lat"],
                "additionalProperties": False,
            },
            "kind": {
                "oneOf": [{"type": "object", "properties": {"x": {"type": "integer"}}, **closed}, {"type": "null"}]
            },
        },
        "required": ["city", "units", "where", "kind"],
        "additionalProperties": False,
    }


def test_strict_schema_units() -> None:
    """No parameters: no arguments, strict; an explicit ``strict`` is never changed; the input is not mutated."""
    assert st.tool_parameters({"type": "function", "name": "f"}) == (
        {"type": "object", "properties": {}, "required": [], "additionalProperties": False},
        True,
    )
    schema = MAPS["dict of str"]
    before = json.dumps(schema, sort_keys=True)
    assert st.tool_parameters({"name": "f", "parameters": schema, "strict": True}) == (schema, True)
    assert st.tool_parameters({"name": "f", "parameters": schema}) == (schema, False)
    assert json.dumps(schema, sort_keys=True) == before
    closed = {"type": "object", "additionalProperties": False}
    assert st.strictable(closed) and st.strict_schema(closed) == {**closed, "properties": {}, "required": []}
    # a property named like a keyword is a property, not a subschema keyword
    odd = {"type": "object", "properties": {"items": {"type": "string"}, "properties": {"type": "string"}}}
    assert st.strict_schema(odd)["properties"] == odd["properties"]


# -- 2, 3, 5: the stream renderers --------------------------------------------------------------------------------


@pytest.mark.parametrize("script", list(EXPECTED))
async def test_messages_stream_keeps_every_call_and_text(up: Scripted, script: str) -> None:
    async with up.claude_client() as claude:
        async with claude.messages.stream(
            model="m", max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": script}]
        ) as stream:
            events = [e async for e in stream]
            final = await stream.get_final_message()
    text, expected = EXPECTED[script]
    assert "".join(b.text for b in final.content if b.type == "text") == text
    assert all(b.text.strip() for b in final.content if b.type == "text")  # no whitespace-only block
    assert [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"] == expected
    assert final.stop_reason == "tool_use"
    starts = [e for e in events if e.type == "content_block_start"]
    assert [e.content_block.name for e in starts if e.content_block.type == "tool_use"] == [c[1] for c in expected]
    assert_blocks_in_order(events, len(final.content))


@pytest.mark.parametrize("script", list(EXPECTED))
async def test_responses_stream_keeps_every_call_and_text(up: Scripted, script: str) -> None:
    async with up.openai_client() as client:
        async with client.responses.stream(model="m", input=script, tools=FUNCTIONS, store=False) as stream:
            events = [e async for e in stream]
            final = await stream.get_final_response()
    text, expected = EXPECTED[script]
    messages = [o for o in final.output if o.type == "message"]
    assert "".join(p.text for m in messages for p in m.content if p.type == "output_text") == text
    assert all(p.text.strip() for m in messages for p in m.content if p.type == "output_text")
    fcs = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in fcs] == expected
    assert final.status == "completed"
    assert all(m.status == "completed" for m in messages) and all(c.status == "completed" for c in fcs)
    assert_items_in_order(events, len(final.output))


async def test_text_held_behind_a_call_that_never_completes_goes_out_at_the_end(up: Scripted) -> None:
    script = "review text after broken call"
    async with up.claude_client() as claude:
        async with claude.messages.stream(
            model="m", max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": script}]
        ) as stream:
            message = await stream.get_final_message()
    uses = [b.id for b in message.content if b.type == "tool_use"]
    texts = [b.text for b in message.content if b.type == "text"]
    assert [b.type for b in message.content] == ["tool_use", "text"] and uses == ["c0"] and texts == ["done"]
    async with up.openai_client() as client:
        async with client.responses.stream(model="m", input=script, tools=FUNCTIONS, store=False) as rstream:
            response = await rstream.get_final_response()
    fc, text = response.output
    assert fc.type == "function_call" and fc.arguments == '{"a": 1'  # every byte the upstream sent
    assert text.type == "message" and [p.text for p in text.content if p.type == "output_text"] == ["done"]


# -- 4. Messages usage: the prompt tokens the upstream wrote to its cache -----------------------------------------


async def test_messages_usage_reports_cache_writes(up: Scripted) -> None:
    """The upstream: 12 prompt tokens, 3 read from its cache, 7 written to it."""
    want = {"input_tokens": 2, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 7, "output_tokens": 9}
    async with up.claude_client() as claude:
        message = await claude.messages.create(
            model="m", max_tokens=50, messages=[{"role": "user", "content": "cache write"}]
        )
        async with claude.messages.stream(
            model="m", max_tokens=50, messages=[{"role": "user", "content": "cache write"}]
        ) as stream:
            events = [e async for e in stream]
            streamed = await stream.get_final_message()
    for usage in (message.usage, streamed.usage):
        assert {k: getattr(usage, k) for k in want} == want
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert delta.usage.cache_creation_input_tokens == 7 and delta.usage.input_tokens == 2
