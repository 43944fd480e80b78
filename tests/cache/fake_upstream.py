"""A tiny OpenAI-compatible upstream for the cache tests: counts calls, answers tools, can cut a stream.

Every answer names the call number (``answer #N``), so a test can tell a cached answer from a fresh one.
A request with ``tools`` gets a tool call (``finish_reason: tool_calls``); otherwise the content is
``answer #N to: <last user message>``. Setting ``state.cut_streams`` makes streams stop half way, without
a finish reason and without ``[DONE]``, as a crashed upstream would. Embeddings are ``[N, index, 0.5]`` per
input (floats or base64, as asked).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class UpstreamState:
    """Mutable behaviour and counters of the fake upstream."""

    calls: int = 0
    cut_streams: bool = False


def _last_user(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user" and isinstance(msg.get("content"), str):
            return str(msg["content"])
    return str(body.get("prompt") or "")


def _tool_call(n: int) -> dict[str, Any]:
    return {
        "id": f"call_{n}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "call": n})},
    }


def _sse(obj: dict[str, Any] | str) -> bytes:
    return b"data: " + (obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n\n"


def create_fake_upstream(state: UpstreamState) -> Starlette:
    """The ASGI app (``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``)."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        state.calls += 1
        n = state.calls
        model = body.get("model", "m")
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        tools = bool(body.get("tools"))
        content = f"answer #{n} to: {_last_user(body)}"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if tools else content}
            if tools:
                message["tool_calls"] = [_tool_call(n)]
            reply = {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tools else "stop"}],
                "usage": usage,
            }
            return JSONResponse(reply)
        base = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

        async def frames() -> Any:
            yield chunk({"role": "assistant", "content": ""})
            if tools:
                call = _tool_call(n)
                args = call["function"]["arguments"]
                head = {"index": 0, "id": call["id"], "type": "function", "function": {"name": "get_weather"}}
                yield chunk({"tool_calls": [{**head, "function": {"name": "get_weather", "arguments": ""}}]})
                for i in range(0, len(args), 5):
                    yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 5]}}]})
                yield chunk({}, "tool_calls")
            else:
                words = content.split(" ")
                for i, w in enumerate(words):
                    if state.cut_streams and i == len(words) // 2:
                        return  # the connection ends mid-answer: no finish_reason, no [DONE]
                    yield chunk({"content": w if i == 0 else " " + w})
                    await asyncio.sleep(0)
                yield chunk({}, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _sse({**base, "choices": [], "usage": usage})
            yield _sse("[DONE]")

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def completions(request: Request) -> Response:
        body = await request.json()
        state.calls += 1
        n = state.calls
        text = f" completion #{n} of: {body.get('prompt')}"
        usage = {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
        base = {"id": f"cmpl-{n}", "object": "text_completion", "created": 1700000000, "model": body.get("model")}
        if not body.get("stream"):
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            return JSONResponse({**base, "choices": [choice], "usage": usage})

        async def frames() -> Any:
            half = len(text) // 2
            for piece in (text[:half], text[half:]):
                yield _sse({**base, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]})
            yield _sse({**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _sse({**base, "choices": [], "usage": usage})
            yield _sse("[DONE]")

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        body = await request.json()
        state.calls += 1
        n = state.calls
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, _ in enumerate(inputs):
            vector = [float(n), float(i), 0.5]  # names the call: a cached vector is told from a fresh one
            value: Any = vector
            if body.get("encoding_format") == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        usage = {"prompt_tokens": 2 * len(inputs), "total_tokens": 2 * len(inputs)}
        return JSONResponse({"object": "list", "data": data, "model": body.get("model"), "usage": usage})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )
