"""Build a gateway app in-process over a loopback upstream that answers with the test's handler."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import httpx
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import Settings, settings_from_dict
from tests.helpers.upstream import Seen, Upstream, under_prefix, with_base_urls

Handler = Callable[[Seen], web.StreamResponse | Awaitable[web.StreamResponse]]


def chat_reply(model: str, content: str = "hello", *, prompt: int = 10, completion: int = 5) -> dict[str, Any]:
    """A minimal OpenAI chat completion body."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def sse(*chunks: dict[str, Any] | str) -> bytes:
    out = b""
    for c in chunks:
        out += b"data: " + (c if isinstance(c, str) else json.dumps(c)).encode() + b"\n\n"
    return out


THREE_MODELS: dict[str, Any] = {
    "models": [
        {
            "name": "small",
            "backend": "vllm",
            "base_url": "http://small/v1",
            "upstream_model": "meta/small",
            "quality": 6.3,
            "gpu_hour_usd": 1.0,
            "tokens_per_second": 1500,
            "context_window": 4096,
            "supports_tools": False,
        },
        {
            "name": "medium",
            "backend": "vllm",
            "base_url": "http://medium/v1",
            "upstream_model": "meta/medium",
            "quality": 6.7,
            "gpu_hour_usd": 1.8,
            "tokens_per_second": 900,
            "context_window": 4096,
            "supports_tools": False,
        },
        {
            "name": "big",
            "backend": "openai",
            "base_url": "http://big/v1",
            "upstream_model": "gpt-4",
            "quality": 9.0,
            "context_window": 8192,
        },
    ],
    "retry": {"max_attempts": 3, "backoff_base_ms": 0},
    "cache": {"enabled": False},
    "server": {"metrics_scrape_seconds": 3600},
}


def make_settings(overrides: dict[str, Any] | None = None) -> Settings:
    data = {**THREE_MODELS, **(overrides or {})}
    return settings_from_dict(data)


@contextlib.asynccontextmanager
async def gateway_client(
    settings: Settings, handler: Handler, *, refused: Collection[str] = ()
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the gateway app in process (its lifespan run).

    The gateway sends upstream over real sockets: the models' hosts (``http://small/v1``...) are served by
    one loopback :class:`~tests.helpers.upstream.Upstream` under path prefixes (``request.backend`` is the
    host), answering with ``handler``; nothing listens for the hosts in ``refused``."""
    async with Upstream(handler) as upstream:
        app = create_app(with_base_urls(settings, under_prefix(upstream.url, frozenset(refused))))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
                client.gateway = app.state.gateway  # type: ignore[attr-defined]
                client.upstream = upstream  # type: ignore[attr-defined]
                yield client


@pytest.fixture
def settings() -> Settings:
    return make_settings()
