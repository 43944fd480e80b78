"""The pure translators: Responses and Messages requests to chat bodies, chat answers back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequest, NotFound
from gateway.frontdoors import messages as ms
from gateway.frontdoors import responses as rs


def chat_of_responses(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return rs.to_chat(rs.parse_request({"model": "m", **body}), history or [])


def test_responses_text_format_and_sampling() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = chat_of_responses(
        {
            "input": "x",
            "text": {"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}},
            "max_output_tokens": 9,
            "temperature": 0.1,
            "top_p": 0.5,
            "user": "u",
            "metadata": {"k": "v"},
        }
    )
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema, "strict": True},
    }
    assert (
        chat["max_completion_tokens"] == 9
        and chat["temperature"] == 0.1
        and chat["top_p"] == 0.5
        and chat["user"] == "u"
    )
    assert "metadata" not in chat  # the gateway's to echo, not the upstream's
    assert chat_of_responses({"input": "x", "text": {"format": {"type": "json_object"}}})["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in chat_of_responses({"input": "x", "text": {"format": {"type": "text"}}})


def test_responses_items_become_chat_messages() -> None:
    chat = chat_of_responses(
        {
            "instructions": "sys",
            "input": [
                {"role": "developer", "content": "dev"},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {"type": "input_image", "image_url": "http://i/x.png"},
                    ],
                },
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": "two"},
                {"type": "reasoning", "id": "r", "summary": []},
            ],
        },
        history=[{"role": "user", "content": "before"}],
    )
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "developer", "user", "assistant", "tool", "tool"]
    assert chat["messages"][3]["content"][1] == {"type": "image_url", "image_url": {"url": "http://i/x.png"}}
    assert [c["id"] for c in chat["messages"][4]["tool_calls"]] == ["c1", "c2"]  # parallel calls: one message


def test_responses_tools_and_choice() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}
    chat = chat_of_responses({"input": "x", "tools": [tool], "tool_choice": {"type": "function", "name": "f"}})
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    with pytest.raises(InvalidRequest) as info:
        chat_of_responses({"input": "x", "tools": [tool, {"type": "file_search"}]})
    assert info.value.param == "tools[1].type"
    for field in ("background", "conversation", "prompt"):
        with pytest.raises(InvalidRequest) as info:
            chat_of_responses({"input": "x", field: True if field == "background" else {"id": "p"}})
        assert info.value.param == field


def test_responses_from_chat() -> None:
    req = rs.parse_request({"model": "auto", "input": "x"})
    completion = {
        "model": "small",
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "content": "calling",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"a":1}'}}],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    out = rs.from_chat(req, "resp_1", completion)
    assert out["status"] == "completed" and out["model"] == "small"
    assert [i["type"] for i in out["output"]] == ["message", "function_call"]
    assert out["output"][1]["call_id"] == "c" and out["usage"]["total_tokens"] == 7
    assert rs.output_messages(out["output"]) == [
        {
            "role": "assistant",
            "content": "calling",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
        }
    ]


def chat_of_messages(body: dict[str, Any]) -> dict[str, Any]:
    return ms.to_chat(ms.parse_request({"model": "m", "max_tokens": 10, **body}))


def test_messages_blocks_become_chat_messages() -> None:
    chat = chat_of_messages(
        {
            "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QQ=="}},
                        {"type": "text", "text": "what?"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "let me"},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "42"}],
                            "is_error": True,
                        },
                        {"type": "text", "text": "so?"},
                    ],
                },
            ],
            "stop_sequences": ["END"],
            "top_k": 5,
            "metadata": {"user_id": "u"},
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        }
    )
    m = chat["messages"]
    assert m[0] == {"role": "system", "content": "a\nb"}
    assert m[1]["content"][0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,QQ=="}}
    assert m[2]["content"] == "let me" and m[2]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert m[3] == {"role": "tool", "tool_call_id": "t1", "content": "Error: 42"}
    assert m[4] == {"role": "user", "content": "so?"}
    assert (
        chat["stop"] == ["END"] and chat["top_k"] == 5 and chat["user"] == "u" and chat["max_completion_tokens"] == 10
    )
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False


def test_messages_refusals() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"mcp_servers": [{"url": "x"}]}, "mcp_servers"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ]
    for block, param in (
        ({"type": "tool_use", "name": "f", "input": {}}, "id"),
        ({"type": "tool_use", "id": "", "name": "f", "input": {}}, "id"),
        ({"type": "tool_use", "id": "t1", "input": {}}, "name"),
        ({"type": "tool_use", "id": "t1", "name": "f", "input": "a=1"}, "input"),
    ):
        turns = [
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}, block]},
            {"role": "user", "content": "x"},
        ]
        cases.append(({"messages": turns}, f"messages[0].content[1].{param}"))
    for role in ("user", "assistant"):
        turns = [
            {"role": role, "content": [{"type": "text", "text": "a"}, {"type": "text"}]},
            {"role": "user", "content": "x"},
        ]
        cases.append(({"messages": turns}, "messages[0].content[1].text"))
    for extra, param in cases:
        body = {"messages": [{"role": "user", "content": "x"}], **extra}
        with pytest.raises(InvalidRequest) as info:
            chat_of_messages(body)
        assert info.value.param == param
        if info.value.message.startswith("Missing required parameter"):
            assert info.value.code == "missing_required_parameter"


def test_messages_from_chat_and_stop_reasons() -> None:
    req = ms.parse_request(
        {"model": "m", "max_tokens": 5, "stop_sequences": ["END"], "messages": [{"role": "user", "content": "x"}]}
    )
    completion = {
        "choices": [{"finish_reason": "stop", "stop_reason": "END", "message": {"content": "hi"}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
    }
    out = ms.from_chat(req, completion)
    assert out["stop_reason"] == "stop_sequence" and out["stop_sequence"] == "END"
    assert out["content"] == [{"type": "text", "text": "hi"}] and out["usage"]["input_tokens"] == 2
    assert ms.stop_reason("length", None, None) == ("max_tokens", None)
    assert ms.stop_reason("tool_calls", None, None) == ("tool_use", None)
    assert ms.tool_input("not json") == {"_raw_arguments": "not json"}
    assert ms.error_body(NotFound("gone"), "r1") == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "gone"},
        "request_id": "r1",
    }


def _frames(*chunks: dict[str, Any]) -> Any:
    async def gen() -> Any:
        for chunk in chunks:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return gen()


def _events(raw: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(e.split(b"\ndata: ", 1)[1]) for e in raw]


async def _collect(stream: Any) -> list[dict[str, Any]]:
    return _events([e async for e in stream])


def test_responses_reasoning_effort_goes_upstream_and_is_echoed() -> None:
    body = chat_of_responses({"input": "x", "reasoning": {"effort": "high", "summary": "auto"}})
    assert body["reasoning_effort"] == "high"
    assert "reasoning_effort" not in chat_of_responses({"input": "x"})
    req = rs.parse_request({"model": "o", "input": "x", "reasoning": {"effort": "low"}})
    assert rs.skeleton(req, "resp_1")["reasoning"] == {"effort": "low", "summary": None}


def test_responses_usage_details_and_a_refusal_cut_short() -> None:
    req = rs.parse_request({"model": "m", "input": "x"})
    usage = {
        "prompt_tokens": 2000,
        "completion_tokens": 600,
        "prompt_tokens_details": {"cached_tokens": 1536},
        "completion_tokens_details": {"reasoning_tokens": 500},
    }
    completion = {"choices": [{"finish_reason": "length", "message": {"content": None, "refusal": "No."}}]}
    out = rs.from_chat(req, "resp_1", {**completion, "usage": usage})
    assert out["usage"]["input_tokens_details"] == {"cached_tokens": 1536, "cache_write_tokens": 0}
    assert out["usage"]["output_tokens_details"] == {"reasoning_tokens": 500}
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["output"][0]["status"] == "incomplete"
    assert out["output"][0]["content"] == [{"type": "refusal", "refusal": "No."}]


async def test_responses_stream_of_a_refusal() -> None:
    from gateway.frontdoors.responses_stream import render

    req = rs.parse_request({"model": "m", "input": "x", "stream": True})
    done: list[dict[str, Any]] = []

    async def on_done(response: dict[str, Any]) -> None:
        done.append(response)

    frames = _frames(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "refusal": "I can"}}]},
        {"choices": [{"index": 0, "delta": {"refusal": "not."}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    )
    events = await _collect(render(frames, rs.skeleton(req, "resp_1"), on_done))
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[6]["refusal"] == "I cannot."
    assert events[-1]["response"]["output"][0]["content"] == [{"type": "refusal", "refusal": "I cannot."}]
    assert done[0]["output"][0]["content"][0]["refusal"] == "I cannot."  # what is stored for the next turn


async def test_responses_stream_cut_short_ends_its_message_incomplete() -> None:
    from gateway.frontdoors.responses_stream import render

    req = rs.parse_request({"model": "m", "input": "x", "stream": True, "max_output_tokens": 2})

    async def on_done(response: dict[str, Any]) -> None:
        return None

    frames = _frames({"choices": [{"index": 0, "delta": {"content": "a b"}, "finish_reason": "length"}]})
    events = await _collect(render(frames, rs.skeleton(req, "resp_1"), on_done))
    item_done = next(e for e in events if e["type"] == "response.output_item.done")
    assert item_done["item"]["status"] == "incomplete"
    assert events[-1]["type"] == "response.incomplete"


def test_messages_forced_tool_call_stops_for_tool_use() -> None:
    """OpenAI and vLLM end a call forced by name with ``stop``: the Messages API says ``tool_use``."""
    req = ms.parse_request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    completion = {"choices": [{"finish_reason": "stop", "message": {"content": None, "tool_calls": [call]}}]}
    out = ms.from_chat(req, completion)
    assert out["stop_reason"] == "tool_use" and out["content"][0]["type"] == "tool_use"
    refused = ms.from_chat(req, {"choices": [{"finish_reason": "stop", "message": {"refusal": "No."}}]})
    assert refused["stop_reason"] == "refusal" and refused["content"] == [{"type": "text", "text": "No."}]


async def test_messages_stream_of_a_forced_tool_call_and_of_a_refusal() -> None:
    from gateway.frontdoors.messages_stream import render

    tool = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}
    frames = _frames({"choices": [{"index": 0, "delta": {"tool_calls": [tool]}, "finish_reason": "stop"}]})
    events = await _collect(render(frames, "m", 3, None))
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    frames = _frames({"choices": [{"index": 0, "delta": {"refusal": "No."}, "finish_reason": "stop"}]})
    events = await _collect(render(frames, "m", 3, None))
    assert [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"] == ["No."]
    assert next(e for e in events if e["type"] == "message_delta")["delta"]["stop_reason"] == "refusal"


def test_messages_tool_result_images_follow_the_tool_message() -> None:
    """A chat tool message holds text only: a tool result's images go in the user message right after it."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}
    turns = [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "here"}, image]}
            ],
        },
    ]
    messages = chat_of_messages({"messages": turns})["messages"]
    assert messages[-2] == {"role": "tool", "tool_call_id": "t1", "content": "here"}
    assert messages[-1] == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}],
    }
    turns[2]["content"][0]["content"] = [{"type": "document", "source": {}}]  # type: ignore[index]
    with pytest.raises(InvalidRequest) as info:
        chat_of_messages({"messages": turns})
    assert info.value.param == "messages[2].content[0].content[0].type"


@pytest.mark.parametrize(
    "source",
    ["abc", 7, None, {"type": "base64"}, {"type": "base64", "media_type": "image/png", "data": ""}, {"type": "file"}],
)
def test_messages_a_malformed_image_source_is_a_400(source: object) -> None:
    """A string source was a 500 (AttributeError) that the SDK retried; a base64 source without data went upstream
    as ``data:None;base64,None``. Both are the client's 400, as on Anthropic's API."""
    for content in (
        [{"type": "image", "source": source}],
        [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": source}]}],
    ):
        with pytest.raises(InvalidRequest) as info:
            chat_of_messages({"messages": [{"role": "user", "content": content}]})
        assert info.value.param is not None and info.value.param.endswith(".source")


def test_messages_usage_reports_cache_reads() -> None:
    """OpenAI's ``cached_tokens`` are Anthropic's ``cache_read_input_tokens``, apart from ``input_tokens``."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 900}}
    completion = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    req = ms.parse_request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    out = ms.from_chat(req, completion)["usage"]
    assert (out["input_tokens"], out["cache_read_input_tokens"], out["output_tokens"]) == (100, 900, 5)


def test_responses_parameters_chat_apis_take() -> None:
    """``max_output_tokens`` goes upstream as ``max_completion_tokens`` (reasoning models refuse ``max_tokens``);
    ``tool_choice`` without tools is dropped (chat APIs refuse it; the Responses API ignores it)."""
    chat = chat_of_responses({"input": "x", "max_output_tokens": 200, "tool_choice": "auto"})
    assert chat["max_completion_tokens"] == 200 and "max_tokens" not in chat
    assert "tool_choice" not in chat
    assert "tool_choice" not in chat_of_responses({"input": "x", "tools": [], "tool_choice": "required"})
    with pytest.raises(InvalidRequest):  # still checked
        chat_of_responses({"input": "x", "tool_choice": "sometimes"})


@pytest.mark.parametrize("with_index", [True, False])
async def test_parallel_calls_streamed_without_an_index_stay_apart(with_index: bool) -> None:
    """Gemini's OpenAI-compatible API and some proxies send tool-call deltas without ``index``: each new call
    ``id`` is a new call (read as index 0, the second call's arguments were appended to the first's)."""
    from gateway.frontdoors import messages_stream, responses_stream

    def call(i: int, call_id: str | None, name: str | None, args: str) -> dict[str, Any]:
        out: dict[str, Any] = {"function": {"arguments": args, **({"name": name} if name else {})}}
        if call_id:
            out["id"] = call_id
        if with_index:
            out["index"] = i
        return out

    chunks = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [call(0, "call_1", "weather", '{"city":')]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [call(0, None, None, '"Paris"}')]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [call(1, "call_2", "weather", '{"city":"Rome"}')]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    req = rs.parse_request({"model": "m", "input": "x", "stream": True})

    async def on_done(response: dict[str, Any]) -> None:
        return None

    events = await _collect(responses_stream.render(_frames(*chunks), rs.skeleton(req, "resp_1"), on_done))
    calls = [(i["call_id"], i["arguments"]) for i in events[-1]["response"]["output"]]
    assert calls == [("call_1", '{"city":"Paris"}'), ("call_2", '{"city":"Rome"}')]
    events = await _collect(messages_stream.render(_frames(*chunks), "m", 3, None))
    starts = [e["content_block"]["id"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["call_1", "call_2"]


async def test_responses_stream_failed_mid_answer_ends_its_message_incomplete() -> None:
    from gateway.frontdoors.responses_stream import render

    req = rs.parse_request({"model": "m", "input": "x", "stream": True})

    async def on_done(response: dict[str, Any]) -> None:
        return None

    frames = _frames(
        {"choices": [{"index": 0, "delta": {"content": "three words here"}}]},
        {"error": {"message": "upstream failed mid-stream", "type": "upstream_error"}},
    )
    events = await _collect(render(frames, rs.skeleton(req, "resp_1"), on_done))
    item_done = next(e for e in events if e["type"] == "response.output_item.done")
    assert item_done["item"]["status"] == "incomplete"  # it said "completed"
    assert events[-1]["type"] == "response.failed"


def test_messages_structured_outputs_go_upstream() -> None:
    """``output_config.format`` (what ``client.messages.parse(output_format=Model)`` sends) is chat's
    ``response_format``, ``effort`` its ``reasoning_effort``, a tool's ``strict`` kept: all three were dropped
    and the answer came back unconstrained with a 200."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"name": "f", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}, "strict": True}
    any_object = {"name": "g", "input_schema": {"type": "object"}, "strict": True}
    chat = chat_of_messages(
        {
            "messages": [{"role": "user", "content": "where?"}],
            "output_config": {"format": {"type": "json_schema", "schema": schema}, "effort": "low"},
            "tools": [tool, any_object],
        }
    )
    # strict where that keeps the schema's meaning (every object closed, every property required), as a strict
    # upstream requires; a schema that cannot be (any object) goes as sent, not strict
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {**schema, "additionalProperties": False}, "strict": True},
    }
    strict_fn, open_fn = (t["function"] for t in chat["tools"])
    assert strict_fn["strict"] is True and strict_fn["parameters"]["required"] == ["q"]
    assert open_fn["strict"] is False and open_fn["parameters"] == {"type": "object"}
    assert chat["reasoning_effort"] == "low"
    for bad, param in (
        ({"format": {"type": "xml"}}, "output_config.format"),
        ({"effort": "max!"}, "output_config.effort"),
        ({"task_budget": 5}, "output_config.task_budget"),
    ):
        with pytest.raises(InvalidRequest) as info:
            chat_of_messages({"messages": [{"role": "user", "content": "x"}], "output_config": bad})
        assert info.value.param == param
