"""A tiny deterministic OpenAI-compatible upstream for the accounting tests.

The upstream model name selects the behaviour:

* ``*-fail``: HTTP 500 (an upstream error);
* ``*-nousage``: answers without ``usage`` (the gateway must count the tokens itself);
* anything else: answers with ``usage``.

The answer has ``max_tokens`` words (default 8), each one token: ``usage.completion_tokens`` equals
that, and ``usage.prompt_tokens`` is ``PROMPT_BASE`` plus the number of words in the messages. The
optional ``delay`` field of the request (seconds) slows the answer down.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

PROMPT_BASE = 7
DEFAULT_WORDS = 8


def prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens this upstream reports for ``body``."""
    words = 0
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, str):
            words += len(content.split())
    return PROMPT_BASE + words


def completion_tokens(body: dict[str, Any]) -> int:
    """The completion tokens this upstream reports for ``body``."""
    return int(body.get("max_tokens") or DEFAULT_WORDS)


def _usage(body: dict[str, Any]) -> dict[str, int]:
    p, c = prompt_tokens(body), completion_tokens(body)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _chat(request: Request) -> Response:
    body = await request.json()
    model = str(body.get("model", ""))
    if body.get("delay"):
        await asyncio.sleep(float(body["delay"]))
    if model.endswith("-fail"):
        return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
    words = ["word"] * completion_tokens(body)
    with_usage = not model.endswith("-nousage")
    if body.get("stream"):
        return StreamingResponse(_stream(model, words, body, with_usage), media_type="text/event-stream")
    out: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}
        ],
    }
    if with_usage:
        out["usage"] = _usage(body)
    return JSONResponse(out)


async def _stream(model: str, words: list[str], body: dict[str, Any], with_usage: bool) -> AsyncIterator[bytes]:
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model}
    for i, w in enumerate(words):
        text = w if i == 0 else " " + w
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield b"data: " + json.dumps(last).encode() + b"\n\n"
    if with_usage:
        yield b"data: " + json.dumps({**base, "choices": [], "usage": _usage(body)}).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


async def _ok(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _metrics(request: Request) -> Response:
    return PlainTextResponse("")


def create_upstream_app() -> Starlette:
    """The upstream app."""
    return Starlette(
        routes=[
            Route("/v1/chat/completions", _chat, methods=["POST"]),
            Route("/health", _ok),
            Route("/v1/models", _ok),
            Route("/metrics", _metrics),
        ]
    )


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_upstream_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
