"""Limits on what a client may send and how slowly: the size of a request's head, enforced in the app, and
deadlines for the head and the body, enforced in the HTTP protocol (:class:`GuardedHttpToolsProtocol`).

uvicorn's ``h11_max_incomplete_event_size`` applies only to its h11 protocol; with httptools (the default
when installed, and the faster one) nothing bounds the headers. This pure ASGI middleware answers any
request whose path, query string and headers together exceed ``server.max_header_bytes`` with a
431 in the OpenAI error shape, before routing, and closes the connection.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.constraints import PARSED_HEADERS
from gateway.errors import HeadersTooLarge, InvalidRequest

#: Bytes counted per header besides its name and value (": " and CRLF), as on the wire.
_PER_HEADER = 4
#: Headers read as one value: sent twice, a request is ambiguous (which key? which limit?) and refused.
SINGLE_VALUED = frozenset(
    {"authorization", "x-api-key", "anthropic-version", "x-request-id", "content-length", *PARSED_HEADERS}
)


def header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers by lower-cased name: the one parse every endpoint uses. A header sent on several lines
    is one list, its values joined with ", " (RFC 9110, 5.3): ``Cache-Control: no-store`` then ``Cache-Control:
    no-transform`` must keep ``no-store``, which the last line alone lost.

    Raises:
        InvalidRequest: a header of :data:`SINGLE_VALUED` appears more than once (``param`` names it).
    """
    out: dict[str, str] = {}
    for name_b, value_b in raw:
        name = name_b.decode("latin-1").lower()
        if name in out and name in SINGLE_VALUED:
            raise InvalidRequest(
                f"The header '{name}' was sent more than once; send it once.", param=name, code="duplicate_header"
            )
        value = value_b.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def head_size(scope: Scope) -> int:
    """The bytes of the request's target (path and query) and headers, as they were on the wire."""
    size = len(scope.get("raw_path") or scope.get("path", "")) + len(scope.get("query_string") or b"")
    for name, value in scope.get("headers") or ():
        size += len(name) + len(value) + _PER_HEADER
    return size


class HeaderLimit:
    """Refuses requests whose head is larger than ``max_header_bytes`` (431)."""

    def __init__(self, app: ASGIApp, *, max_header_bytes: int, recorded: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        #: POST paths whose handler refuses such a request itself, with its ledger row (the inference paths)
        self.recorded = recorded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not (scope["method"] == "POST" and scope["path"] in self.recorded)
            and (size := head_size(scope)) > self.max_header_bytes
        ):
            await refuse_oversized_head(send, size, self.max_header_bytes)
            return
        await self.app(scope, receive, send)


async def refuse_oversized_head(send: Send, size: int, limit: int) -> None:
    """Answer 431 in the OpenAI error shape and close the connection."""
    err = HeadersTooLarge(size, limit)
    body = orjson.dumps(err.to_body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- connection timeouts -------------------------------------------------------------------------------------

#: Paths answered whatever uvicorn's concurrency limit says: the liveness probe's.
_EXEMPT_PATHS = frozenset({b"/health"})

#: Environment variables the server process sets for its workers (uvicorn builds the protocol per connection,
#: in each worker process, from a class: the limits travel by environment, read once per connection).
HEAD_TIMEOUT_ENV = "LLM_GATEWAY_HEAD_TIMEOUT_S"
BODY_TIMEOUT_ENV = "LLM_GATEWAY_BODY_TIMEOUT_S"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with two deadlines it lacks: a request's head (request line and headers)
    must arrive within ``head_timeout_s`` of the connection opening or of the previous response (a 408,
    then the connection closes), and its body within ``body_timeout_s`` of the head (the connection closes:
    the request is recorded as abandoned). Idle keep-alive connections are closed by uvicorn's own
    ``timeout_keep_alive``; slow readers of a response are the backends' concern (back-pressure)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = float(os.environ.get(HEAD_TIMEOUT_ENV) or 10.0)
        self.body_timeout_s = float(os.environ.get(BODY_TIMEOUT_ENV) or 60.0)
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, on_expiry: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, on_expiry)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout_s, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self.head_timeout_s, self._head_expired)

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout_s, self._body_expired)
        limit = self.limit_concurrency
        if limit is not None and self.url.split(b"?", 1)[0] in _EXEMPT_PATHS:
            # uvicorn answers 503 to every request past ``server.max_connections`` (open connections, idle ones
            # included): a liveness probe failing then would have the orchestrator restart a pod that is only busy.
            self.limit_concurrency = None
        try:
            super().on_headers_complete()
        finally:
            self.limit_concurrency = limit

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _head_expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # between requests: nothing is running
            body = orjson.dumps(
                {
                    "error": {
                        "message": "The request head did not arrive in time.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "request_timeout",
                    }
                }
            )
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.transport.close()

    def _body_expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()  # the app sees a disconnect: the request is recorded as abandoned
