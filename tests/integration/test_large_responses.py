"""Regression: after an upstream response of several MiB, the next request to the same upstream is served
at once, on the same pooled connection, whether the big response was streamed or not, chat or embeddings.

The gateway's former HTTP client paused reading a socket once more than 1 MiB of a response was buffered
(a slow client holds the relay back, so the upstream's bytes pile up) and could put the paused connection
back in its pool when the response was complete: the next request on it waited the whole first-byte
timeout (a 504 from a healthy backend). It also closed a stream's connection when the end of the body had
not arrived yet with ``[DONE]``. Everything here runs on real sockets: a client, the gateway under uvicorn,
and a loopback upstream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import settings_from_dict
from tests.helpers.servers import ServerThread
from tests.helpers.upstream import Seen, Upstream, start_sse

BIG = 6 * 1024 * 1024  # bytes of the big answer
FIRST_BYTE_S = 3.0  # what the next request would wait with a stuck connection
FAST_S = 1.5  # a request served at once, even on a loaded machine


def chat_body(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": max(1, len(text) // 4), "total_tokens": 4},
    }


def embeddings_body(dims: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.123456789] * dims}],
        "model": "up",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }


async def answer(request: Seen) -> web.StreamResponse:
    """``big`` in the prompt asks for a response of several MiB; anything else gets a small one."""
    body = request.json()
    big = "big" in json.dumps(body.get("messages") or body.get("input"))
    if request.path.endswith("/embeddings"):
        return web.json_response(embeddings_body(BIG // 12 if big else 8))
    if not body.get("stream"):
        return web.json_response(chat_body("x" * BIG if big else "small"))
    response = await start_sse(request)
    piece = "y" * 60_000
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    for _ in range(BIG // len(piece) if big else 1):
        delta = {**base, "choices": [{"index": 0, "delta": {"content": piece if big else "small"}}]}
        await response.write(b"data: " + json.dumps(delta).encode() + b"\n\n")
    done = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    await response.write(b"data: " + json.dumps(done).encode() + b"\n\ndata: [DONE]\n\n")
    return response


@pytest.fixture
async def stack() -> AsyncIterator[tuple[str, Upstream]]:
    """(gateway base URL, upstream): the chat and embedding models live on the same upstream origin."""
    async with Upstream(answer) as upstream:
        timeouts = {"first_byte": FIRST_BYTE_S, "between_chunks": FIRST_BYTE_S}
        common = {"backend": "openai", "base_url": upstream.url + "/v1", "timeouts": timeouts}
        settings = settings_from_dict(
            {
                "models": [
                    {"name": "chat", "upstream_model": "up", "quality": 5, **common},
                    {"name": "emb", "upstream_model": "up", "mode": "embedding", **common},
                ],
                "retry": {"max_attempts": 1},
                "cache": {"enabled": False},
                "ledger": {"url": "sqlite+aiosqlite:///:memory:"},
                # one round of health checks, at start-up (waited for below), and none during the test; pooled
                # connections kept past the big response's few seconds on a slow machine (the default 4 s
                # closes the probes' idle ones meanwhile, and a new connection then proves nothing)
                "server": {"health_probe_seconds": 3600, "upstream_keepalive_seconds": 60},
            }
        )
        server = ServerThread(create_app(settings), log_config=None)
        server.start()
        try:
            async with httpx.AsyncClient(base_url=server.base_url) as http:
                await http.get("/ready")  # the first round's probe connections are back in the pool
            yield server.base_url, upstream
        finally:
            server.stop()


async def call(http: httpx.AsyncClient, kind: str, *, big: bool, stream: bool = False) -> float:
    """Send one request of ``kind`` (chat or embeddings) and read the whole answer; returns its seconds."""
    word = "big" if big else "hi"
    if kind == "embeddings":
        path, body = "/v1/embeddings", {"model": "emb", "input": word}
    else:
        path, body = "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": word}]}
        if stream:
            body["stream"] = True
    t0 = time.perf_counter()
    async with http.stream("POST", path, json=body) as r:
        parts = []
        async for part in r.aiter_raw():
            if big and not parts:
                await asyncio.sleep(1.0)  # a slow client: the gateway's relay waits, the upstream's bytes pile up
            parts.append(part)
        content = b"".join(parts)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, content[:300]
    if stream:
        assert content.rstrip().endswith(b"data: [DONE]")
        assert b'"error"' not in content[-500:]
    elif big:
        assert len(content) > BIG // 2
    return elapsed


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (("chat", False), ("chat", False)),
        (("chat", True), ("chat", True)),
        (("chat", True), ("chat", False)),
        (("chat", False), ("embeddings", False)),
        (("embeddings", False), ("embeddings", False)),
        (("embeddings", False), ("chat", True)),
    ],
    ids=lambda case: f"{case[0]}{'-stream' if case[1] else ''}",
)
async def test_the_request_after_a_big_response_is_served_at_once(
    stack: tuple[str, Upstream], first: tuple[str, bool], then: tuple[str, bool]
) -> None:
    base_url, upstream = stack
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        await call(http, first[0], big=True, stream=first[1])
        opened = upstream.connections
        for _ in range(3):
            elapsed = await call(http, then[0], big=False, stream=then[1])
            assert elapsed < FAST_S, f"{elapsed:.2f} s after a {BIG >> 20} MiB response"
    # No new connection after the big response (and no wait, above): what went back to the pool was usable.
    assert upstream.connections == opened
