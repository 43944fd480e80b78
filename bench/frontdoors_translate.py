"""CPU cost of the front doors' translation per request, in process (no sockets): what a Responses or
Messages request costs on top of the same chat request.

    .venv/bin/python bench/frontdoors_translate.py [--n 2000] [--chunks 100]

Prints microseconds per request for: the request translated to chat (parse, validate, build), a complete
answer translated back, and a stream of ``--chunks`` chat chunks rendered as the API's events.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway.frontdoors import messages as ms
from gateway.frontdoors import responses as rs
from gateway.frontdoors.messages_stream import render as render_messages
from gateway.frontdoors.responses_stream import render as render_responses

TOOL = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
RESPONSES_BODY: dict[str, Any] = {
    "model": "auto",
    "instructions": "Be brief.",
    "input": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "21 C"},
        {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow? " * 20}]},
    ],
    "tools": [{"type": "function", "name": "get_weather", "parameters": TOOL}],
    "max_output_tokens": 256,
    "temperature": 0.2,
}
MESSAGES_BODY: dict[str, Any] = {
    "model": "auto",
    "max_tokens": 256,
    "system": "Be brief.",
    "messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "21 C"}]},
        {"role": "user", "content": "And tomorrow? " * 20},
    ],
    "tools": [{"name": "get_weather", "input_schema": TOOL}],
}
COMPLETION = {
    "model": "small",
    "created": 1,
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "word " * 200}}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 200},
}


def chat_frames(chunks: int) -> list[bytes]:
    base = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "small"}
    out = [
        b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": {"content": "word "}}]}) + b"\n\n"
        for _ in range(chunks)
    ]
    out.append(
        b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n"
    )
    usage = {"prompt_tokens": 120, "completion_tokens": chunks}
    out.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


async def _aiter(frames: list[bytes]) -> AsyncIterator[bytes]:
    for f in frames:
        yield f


def timed(fn: Callable[[], Any], n: int) -> float:
    """Median of 5 runs of ``n`` calls, in microseconds per call."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


async def timed_async(make: Callable[[], AsyncIterator[bytes]], n: int) -> float:
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            async for _frame in make():
                pass
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=100)
    args = parser.parse_args()
    raw_r, raw_m = orjson.dumps(RESPONSES_BODY), orjson.dumps(MESSAGES_BODY)
    req_r = rs.parse_request(orjson.loads(raw_r))
    req_m = ms.parse_request(orjson.loads(raw_m))
    frames = chat_frames(args.chunks)

    async def done(_: dict[str, Any]) -> None:
        return None

    rows = [
        (
            "responses: request -> chat",
            timed(lambda: orjson.dumps(rs.to_chat(rs.parse_request(orjson.loads(raw_r)), [])), args.n),
        ),
        (
            "responses: chat answer -> response",
            timed(lambda: orjson.dumps(rs.from_chat(req_r, "resp_x", COMPLETION)), args.n),
        ),
        (
            f"responses: {args.chunks}-chunk stream -> events",
            await timed_async(
                lambda: render_responses(_aiter(frames), rs.skeleton(req_r, "resp_x"), done), args.n // 10
            ),
        ),
        (
            "messages: request -> chat",
            timed(lambda: orjson.dumps(ms.to_chat(ms.parse_request(orjson.loads(raw_m)))), args.n),
        ),
        ("messages: chat answer -> message", timed(lambda: orjson.dumps(ms.from_chat(req_m, COMPLETION)), args.n)),
        (
            f"messages: {args.chunks}-chunk stream -> events",
            await timed_async(lambda: render_messages(_aiter(frames), "small", 120, None), args.n // 10),
        ),
    ]
    for name, us in rows:
        print(f"{name:42s} {us:9.1f} us/request")


if __name__ == "__main__":
    asyncio.run(main())
