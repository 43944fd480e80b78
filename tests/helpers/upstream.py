"""Upstream servers for tests, on loopback sockets inside the test's own event loop.

* :class:`Upstream`: an ``aiohttp.web`` server that records every request and answers it with a handler
  of the test's (plain or async; it returns an ``aiohttp.web`` response). Several backends can share one:
  :func:`with_base_urls` with :func:`under_prefix` points each model at a path prefix of its own
  (``http://small/v1`` becomes ``http://127.0.0.1:PORT/small/v1``), and :attr:`Seen.backend` tells the
  handler which one was called.
* :class:`RawServer`: an asyncio server with no HTTP library, for tests about the wire itself: the
  handler reads and writes bytes, so what goes over the socket is exactly what the test wrote.
* :func:`refused_url`: a base URL nothing listens on; :func:`routing_backends`: backends for tests that
  only route.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from backends import Backend, build_backend, build_session
from gateway.config import Settings
from tests.helpers.servers import free_port

__all__ = [
    "RawServer",
    "Seen",
    "Upstream",
    "http_reply",
    "refused_url",
    "routing_backends",
    "sse_response",
    "start_sse",
    "under_prefix",
    "with_base_urls",
]


@dataclass(frozen=True, slots=True)
class Seen:
    """A request as the upstream received it (``request``: aiohttp's own, to stream an answer to)."""

    method: str
    path: str
    headers: Mapping[str, str]  # case-insensitive names
    body: bytes
    request: web.Request = field(repr=False, compare=False)

    @property
    def backend(self) -> str:
        """The first path segment: the backend's prefix under :func:`with_base_urls`."""
        return self.path.split("/")[1]

    def json(self) -> Any:
        """The body, JSON-decoded."""
        return json.loads(self.body)


Handler = Callable[[Seen], web.StreamResponse | Awaitable[web.StreamResponse]]


def sse_response(body: bytes) -> web.Response:
    """A complete ``text/event-stream`` answer."""
    return web.Response(body=body, content_type="text/event-stream")


async def start_sse(seen: Seen) -> web.StreamResponse:
    """Send the head of a ``text/event-stream`` answer; the caller writes events and returns it."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(seen.request)
    return response


class Upstream:
    """An HTTP server on ``127.0.0.1`` (ephemeral port) answering every method and path with ``handler``.

    Use as ``async with Upstream(handler) as upstream``; :attr:`requests` lists what arrived, in order,
    and :attr:`connections` counts the TCP connections that carried them."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Seen] = []
        self.port = 0
        self._peers: set[object] = set()
        self._runner: web.AppRunner | None = None

    @property
    def connections(self) -> int:
        """Distinct client connections (by the client's address and port) that sent requests."""
        return len(self._peers)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.path, request.headers, await request.read(), request)
        self.requests.append(seen)
        if request.transport is not None:
            self._peers.add(request.transport.get_extra_info("peername"))
        out = self.handler(seen)
        return await out if inspect.isawaitable(out) else out

    async def __aenter__(self) -> Upstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def with_base_urls(settings: Settings, base_url: Callable[[str], str]) -> Settings:
    """``settings`` with every model's ``base_url`` and ``replicas`` mapped through ``base_url``."""
    models = [
        m.model_copy(
            update={
                "base_url": base_url(m.base_url) if m.base_url else None,
                "replicas": [base_url(r) for r in m.replicas],
            }
        )
        for m in settings.models
    ]
    return settings.model_copy(update={"models": models})


def under_prefix(upstream_url: str, refused: frozenset[str] = frozenset()) -> Callable[[str], str]:
    """The mapping for :func:`with_base_urls` that serves ``http://HOST/PATH`` at ``upstream_url/HOST/PATH``
    (hosts in ``refused`` go to a port nothing listens on)."""
    dead = refused_url()

    def rebase(url: str) -> str:
        parts = urlsplit(url)
        return f"{dead if parts.hostname in refused else upstream_url}/{parts.hostname}{parts.path}"

    return rebase


def routing_backends(settings: Settings) -> dict[str, Backend]:
    """The backends of ``settings`` for tests that only route (the router reads their live stats and
    never sends): built as the gateway builds them, over a session that is closed at once."""

    async def build() -> dict[str, Backend]:
        async with build_session(max_connections=1, keepalive_seconds=1) as session:
            return {m.name: build_backend(m, session) for m in settings.models}

    return asyncio.run(build())


def refused_url() -> str:
    """``http://127.0.0.1:PORT`` on a port nothing listens on (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


RawHandler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class RawServer:
    """Reads HTTP/1.1 requests (head plus ``Content-Length`` body) and lets ``handler`` answer with bytes.

    The handler gets the raw request, the reader and the writer, and returns False to close the
    connection after its answer. With ``idle_timeout``, a connection that brings no new request for that
    long is closed (as servers' keep-alive timeouts do). :attr:`connections` counts accepted connections,
    :attr:`requests` every request read."""

    def __init__(self, handler: RawHandler, *, idle_timeout: float | None = None) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                if not await self.handler(head + body, reader, writer):
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"


def http_reply(body: bytes, *, status: bytes = b"200 OK", content_type: bytes = b"application/json") -> bytes:
    """A complete HTTP/1.1 response with ``Content-Length``."""
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        content_type,
        len(body),
        body,
    )
