"""The inference endpoints as one pure ASGI handler: the hot path.

``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` read raw bytes and hand them to
the pipeline, so nothing FastAPI offers (dependency solving, request objects, the middleware stack,
response classes) does any work for them. :class:`gateway.app.GatewayApp` sends these paths here before
its middleware stack; the same handler is also mounted as ordinary routes (under a ``root_path``, or when
the app is wrapped in other middleware). Everything the stack would have done is done here: the header
size limit, OpenAI-shaped errors, a logged 500 for a bug.

One watcher task per request listens for the client going away; it cancels the request's own task, which
cancels the upstream call (or the stream being relayed) and records the request as 499.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from gateway.context import Endpoint, RequestContext
from gateway.errors import (
    GatewayError,
    HeadersTooLarge,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedEncoding,
    shown,
)
from gateway.frontdoors.base import FrontDoor
from gateway.frontdoors.compact_door import CompactDoor
from gateway.frontdoors.messages_door import MessagesDoor
from gateway.frontdoors.responses_door import ResponsesDoor
from gateway.http_limits import head_size, header_dict
from gateway.pipeline import JSONResult, Result
from gateway.runtime import Gateway

log = logging.getLogger("gateway.inference")

#: Path -> endpoint of the hot routes.
HOT_PATHS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_INTERNAL_ERROR = orjson.dumps(
    {
        "error": {
            "message": "The gateway hit an internal error; it has been logged.",
            "type": "internal_error",
            "param": None,
            "code": None,
        }
    }
)


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


class _Exchange:
    """One request/response on the wire: what was sent, and whether the client is still there."""

    __slots__ = ("done", "door", "gone", "receive", "send", "started", "task")

    def __init__(self, receive: Receive, send: Send, door: FrontDoor | None = None) -> None:
        self.door = door
        self.receive = receive
        self.send = send
        self.started = False  # the status line went out
        self.done = False  # the response is complete: a disconnect from now on is the normal end
        self.gone = False  # the client left first and the watcher cancelled the request's task
        self.task: asyncio.Task[Any] | None = None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, more: bool = False) -> None:
        if not more:
            self.done = True
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
        raw = [_JSON, (b"content-length", b"%d" % len(payload))]
        raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        await self.start(status, raw)
        await self.body(payload)

    async def error(self, err: GatewayError, request_id: str | None) -> None:
        headers = dict(err.headers)
        if request_id:
            headers["x-request-id"] = request_id
            if self.door is not None and self.door.request_id_header:
                headers[self.door.request_id_header] = request_id
        body = err.to_body() if self.door is None else self.door.error_body(err, request_id)
        status = err.status if self.door is None else self.door.error_status(err)
        await self.json(status, orjson.dumps(body), headers)


async def handle(
    gw: Gateway, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send, door: FrontDoor | None = None
) -> None:
    """Serve one inference request (``scope`` is an HTTP POST to one of :data:`HOT_PATHS`, or to a front
    door's path: then ``door`` translates the body to ``endpoint``'s and the result back)."""
    limit = gw.settings.server.max_header_bytes
    oversized = HeadersTooLarge(size, limit) if (size := head_size(scope)) > limit else None
    ex = _Exchange(receive, send, door)
    pipeline = gw.pipeline
    try:
        headers = header_dict(scope["headers"])
        duplicate: InvalidRequest | None = None
    except InvalidRequest as err:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        headers.pop("authorization", None)  # ambiguous: not read at all
        duplicate = err
    ctx = pipeline.new_context(endpoint, headers)
    if door is not None:
        door.prepare(ctx)
    try:
        try:
            if oversized is not None:  # refused before anything is read, and recorded like every request
                raise oversized
            if duplicate is not None:
                raise duplicate
            await pipeline.identify(ctx)  # before the body is even read
            raw = await read_asgi_body(receive, headers, gw.settings.server.max_body_bytes)
            if door is not None:
                raw = await door.to_chat(ctx, raw)
        except GatewayError as err:
            await pipeline.fail(ctx, err)
            await ex.error(err, ctx.request_id)
            return
        except ClientGone:
            await pipeline.abandoned(ctx)
            return
        await _run(gw, ex, ctx, raw)
    except Exception:  # the one boundary for bugs, as Starlette's ServerErrorMiddleware would be
        log.exception("unhandled error on POST %s", scope.get("path"))
        if not ex.started:
            await ex.start(500, [_JSON, (b"content-length", b"%d" % len(_INTERNAL_ERROR))])
            await ex.body(_INTERNAL_ERROR)


async def _run(gw: Gateway, ex: _Exchange, ctx: RequestContext, raw: bytes) -> None:
    """The pipeline and the response, cancelled as a whole if the client disconnects first."""
    me = asyncio.current_task()
    assert me is not None
    ex.task = me
    watcher = asyncio.get_running_loop().create_task(_watch(ex))
    try:
        try:
            result = await gw.pipeline.run(ctx, raw)
            if ex.door is not None:
                result = await ex.door.render(ctx, result)
        except GatewayError as err:
            await ex.error(err, ctx.request_id)
            return
        await _respond(ex, result)
    except asyncio.CancelledError:
        if not ex.gone or me.cancelling() != 1:
            raise
        # Our watcher cancelled us: the client is gone and the pipeline recorded the request as 499.
        me.uncancel()
    finally:
        ex.done = True
        watcher.cancel()


async def _respond(ex: _Exchange, result: Result) -> None:
    if isinstance(result, JSONResult):
        await ex.json(result.status, orjson.dumps(result.body), result.headers)
        return
    raw = list(_SSE_HEADERS)
    raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in result.headers.items())
    await ex.start(200, raw)
    frames = result.frames
    try:
        async for frame in frames:
            await ex.body(frame, more=True)
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()
    await ex.body(b"")


async def _watch(ex: _Exchange) -> None:
    """Wait for the client to disconnect, then cancel the request's task (unless it already finished)."""
    while True:
        message: Message = await ex.receive()
        if message["type"] == "http.disconnect":
            break
    if not ex.done and ex.task is not None:
        ex.gone = True
        ex.task.cancel()


async def read_asgi_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) without reading it all, and a compressed one
    (415: read as JSON, gzip's bytes gave a 400 about invalid UTF-8)."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(
            f"Content-Encoding '{shown(encoding, 32)}' is not supported: send the JSON body uncompressed.",
            param="content-encoding",
        )
    declared = headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise InvalidRequest("Invalid Content-Length header.") from None
        if too_big:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
    message = await receive()
    if message["type"] == "http.disconnect":  # gone before the first byte of the body: not an empty body
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


class InferenceRoute:
    """The handler as an ASGI app for one endpoint, for mounting as an ordinary route."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw: Gateway = scope["app"].state.gateway
        await handle(gw, self.endpoint, scope, receive, send)


class FrontDoorRoute:
    """A front door's path as an ASGI app (chat completions behind it)."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw: Gateway = scope["app"].state.gateway
        await handle(gw, "chat", scope, receive, send, FRONT_DOORS[self.path](gw))


def _responses_door(gw: Gateway) -> FrontDoor:
    return ResponsesDoor(gw.responses, gw.settings.responses.max_record_bytes)


#: Path -> a new front door for one request.
FRONT_DOORS: dict[str, Callable[[Gateway], FrontDoor]] = {
    "/v1/responses": _responses_door,
    "/v1/responses/compact": lambda gw: CompactDoor(gw.responses),
    "/v1/messages": lambda gw: MessagesDoor(),
}
