"""Streamed chunks assembled into the body of a non-streaming answer."""

from __future__ import annotations

from typing import Any

from cache.assemble import assemble

USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": "c-1", "object": "chat.completion.chunk", "created": 5, "model": "m", "choices": choices, **extra}


def test_content_per_choice_and_finish_reasons() -> None:
    chunks = [
        chunk(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}}, {"index": 1, "delta": {"role": "assistant"}}]
        ),
        chunk([{"index": 1, "delta": {"content": "Bon"}}]),
        chunk([{"index": 0, "delta": {"content": "Hel"}}], system_fingerprint="fp1"),
        chunk([{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]),
        chunk([{"index": 1, "delta": {"content": "jour", "reasoning_content": "fr"}, "finish_reason": "length"}]),
    ]
    body = assemble(chunks, chat=True, model="gw-model", usage=USAGE)
    assert body is not None
    assert body["object"] == "chat.completion" and body["model"] == "gw-model" and body["usage"] == USAGE
    assert body["id"] == "c-1" and body["created"] == 5 and body["system_fingerprint"] == "fp1"
    first, second = body["choices"]
    assert first == {
        "index": 0,
        "message": {"role": "assistant", "content": "Hello"},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert second["message"] == {"role": "assistant", "content": "Bonjour", "reasoning_content": "fr"}
    assert second["finish_reason"] == "length"


def test_tool_call_deltas_merge_by_index() -> None:
    calls = [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": '{"y"'}},
    ]
    chunks = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": calls}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x": '}}]}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": ": 2}"}}]}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
    ]
    body = assemble(chunks, chat=True, model="m", usage=None)
    assert body is not None and "usage" not in body
    msg = body["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": '{"y": 2}'}},
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_calls_streamed_without_an_index_stay_apart() -> None:
    """Gemini's OpenAI-compatible API (and some proxies) send no ``index``: each call's fragments are told
    apart by its ``id``, as on the live stream. Read as index 0 they were cached as one call,
    ``get_weatherget_time`` with ``{"city": "Paris"}{"tz": "CET"}``, and served so to every later hit."""
    weather = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    clock = {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
    chunks = [
        chunk([{"index": 0, "delta": {"role": "assistant", "tool_calls": [weather]}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": '{"city": "Paris"}'}}]}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [clock]}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": '{"tz": "CET"}'}}]}}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
    ]
    body = assemble(chunks, chat=True, model="m", usage=None)
    assert body is not None
    assert [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in body["choices"][0]["message"]["tool_calls"]
    ] == [
        ("call_1", "get_weather", '{"city": "Paris"}'),
        ("call_2", "get_time", '{"tz": "CET"}'),
    ]


def test_logprobs_are_concatenated() -> None:
    lp1 = {"content": [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}], "refusal": None}
    lp2 = {"content": [{"token": "b", "logprob": -0.2, "bytes": [98], "top_logprobs": []}], "refusal": None}
    chunks = [
        chunk([{"index": 0, "delta": {"content": "a"}, "logprobs": lp1}]),
        chunk([{"index": 0, "delta": {"content": "b"}, "logprobs": lp2, "finish_reason": "stop"}]),
    ]
    body = assemble(chunks, chat=True, model="m", usage=USAGE)
    assert body is not None
    assert [t["token"] for t in body["choices"][0]["logprobs"]["content"]] == ["a", "b"]


def test_text_completions() -> None:
    base = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
    lp = {"tokens": ["x"], "token_logprobs": [-1.0], "top_logprobs": [None], "text_offset": [0]}
    chunks = [
        {**base, "choices": [{"index": 0, "text": "Once", "logprobs": lp, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "text": " upon", "logprobs": lp, "finish_reason": "length"}]},
    ]
    body = assemble(chunks, chat=False, model="m", usage=USAGE)
    assert body is not None and body["object"] == "text_completion"
    choice = body["choices"][0]
    assert choice["text"] == "Once upon" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == ["x", "x"]


def test_unfinished_streams_are_not_assembled() -> None:
    chunks = [
        chunk([{"index": 0, "delta": {"content": "Hel"}}]),
        chunk([{"index": 1, "delta": {"content": "Bon"}, "finish_reason": "stop"}]),
    ]
    assert assemble(chunks, chat=True, model="m", usage=USAGE) is None
    assert assemble([], chat=True, model="m", usage=USAGE) is None


def test_a_replayed_answer_keeps_every_field_a_stream_carries() -> None:
    """A cached answer replayed to a streaming client: refusal, reasoning, a tool call's logprobs and the
    fingerprint come through, and assembling the replay gives the answer back."""
    import orjson

    from gateway.streaming import replay_chunks, with_new_identity

    lp = {"content": [{"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []}], "refusal": None}
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {
        "id": "chatcmpl-first",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "system_fingerprint": "fp1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "42", "reasoning_content": "6 x 7"},
                "finish_reason": "stop",
                "stop_reason": "END",  # vLLM's matched stop string: the Messages API's stop_sequence
            },
            {"index": 1, "message": {"role": "assistant", "content": None, "refusal": "No."}, "finish_reason": "stop"},
            {
                "index": 2,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "logprobs": lp,
                "finish_reason": "tool_calls",
            },
        ],
        "usage": USAGE,
    }
    served = with_new_identity(body)
    assert served["id"].startswith("chatcmpl-") and served["id"] != body["id"] and served["created"] >= 5
    assert body["id"] == "chatcmpl-first"  # the cached body itself is not changed
    assert with_new_identity({"object": "list", "data": []}) == {"object": "list", "data": []}  # embeddings
    frames = list(replay_chunks(served, "m", include_usage=True))
    chunks = [orjson.loads(f[6:]) for f in frames[:-1]]
    assert frames[-1] == b"data: [DONE]\n\n"
    assert {c["id"] for c in chunks} == {served["id"]} and all(c["system_fingerprint"] == "fp1" for c in chunks)
    again = assemble(chunks, chat=True, model="m", usage=USAGE)
    assert again is not None
    messages = [c["message"] for c in again["choices"]]
    assert messages[0]["content"] == "42" and messages[0]["reasoning_content"] == "6 x 7"
    assert messages[1]["refusal"] == "No."
    assert messages[2]["tool_calls"][0]["function"]["name"] == "f"
    assert again["choices"][2]["logprobs"]["content"] == lp["content"]
    assert [c["finish_reason"] for c in again["choices"]] == ["stop", "stop", "tool_calls"]


def test_a_stop_string_survives_the_cache_both_ways() -> None:
    """vLLM's ``stop_reason`` (the stop string it matched): kept when a stream is assembled for the cache and when
    a cached answer is replayed, so a cached Messages answer still says ``stop_reason: stop_sequence``."""
    import orjson

    from gateway.streaming import replay_chunks

    chunks = [
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "one two"}}]},
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]},
    ]  # fmt: skip
    body = assemble(chunks, chat=True, model="m", usage=USAGE)
    assert body is not None and body["choices"][0]["stop_reason"] == "END"
    replayed = [orjson.loads(f[6:]) for f in list(replay_chunks(body, "m", include_usage=False))[:-1]]
    assert replayed[-1]["choices"][0]["stop_reason"] == "END"
    text = {
        "choices": [{"index": 0, "text": "x", "finish_reason": "stop", "stop_reason": "END"}],
        "object": "text_completion",
    }
    (first,) = [orjson.loads(f[6:]) for f in list(replay_chunks(text, "m", include_usage=False))[:-1]]
    assert first["choices"][0]["stop_reason"] == "END"
