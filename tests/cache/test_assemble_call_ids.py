"""Two tool calls streamed on the same ``index`` with different ids (an upstream bug seen in the wild) are two calls
in the assembled (cached) answer, as on the front doors' live streams; they were one, ``fg`` with ``{"a":1}{"b":2}``."""

from __future__ import annotations

from typing import Any

from cache.assemble import CallIndexes, assemble


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c-1", "object": "chat.completion.chunk", "created": 5, "model": "m", "choices": [choice]}


def call(index: int | None, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"function": {"arguments": arguments}}
    if index is not None:
        out["index"] = index
    if call_id is not None:
        out["id"], out["type"] = call_id, "function"
    if name is not None:
        out["function"]["name"] = name
    return out


def test_two_calls_on_one_index_stay_apart() -> None:
    chunks = [
        chunk({"role": "assistant", "tool_calls": [call(0, '{"a":', "c0", "f")]}),
        chunk({"tool_calls": [call(0, "1}")]}),
        chunk({"tool_calls": [call(0, '{"b":', "c1", "g")]}),
        chunk({"tool_calls": [call(0, "2}")]}),  # continues the index's current call, c1
        chunk({"tool_calls": [call(1, '{"c":3}', "c2", "h")]}),  # index 1: not the place c1 was given
        chunk({}, "tool_calls"),
    ]
    body = assemble(chunks, chat=True, model="m", usage=None)
    assert body is not None
    assert [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in body["choices"][0]["message"]["tool_calls"]
    ] == [("c0", "f", '{"a":1}'), ("c1", "g", '{"b":2}'), ("c2", "h", '{"c":3}')]


def test_call_places() -> None:
    places = CallIndexes()
    assert places.of(call(0, "", "a", "f")) == 0
    assert places.of(call(0, "{}", "a")) == 0  # the same id again
    assert places.of(call(0, "{}", "x")) == 0  # another id without a name: a fragment of the call (ids that vary)
    assert places.of(call(0, "", "b", "g")) == 1  # a new call on index 0
    assert places.of(call(0, "{}")) == 1
    assert places.of(call(1, "", "c", "h")) == 2  # index 1's place went to b
    assert places.of(call(2, "", "d", "h")) == 3 and places.of(call(None, "{}")) == 3
    fresh = CallIndexes()  # without an index: told apart by id, as before
    assert [fresh.of(call(None, "", i, "f")) for i in ("p", "q", "p")] == [0, 1, 0]
