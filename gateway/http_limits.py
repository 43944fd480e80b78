"""A limit on the size of a request's head (request line and headers), enforced in the app.

uvicorn's ``h11_max_incomplete_event_size`` applies only to its h11 protocol; with httptools (the default
when installed, and the faster one) nothing bounds the headers. This pure ASGI middleware answers any
request whose path, query string and headers together exceed ``server.max_header_bytes`` with a
431 in the OpenAI error shape, before routing, and closes the connection.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.constraints import PARSED_HEADERS
from gateway.errors import InvalidRequest

#: Bytes counted per header besides its name and value (": " and CRLF), as on the wire.
_PER_HEADER = 4
#: Headers read as one value: sent twice, a request is ambiguous (which key? which limit?) and refused.
SINGLE_VALUED = frozenset({"authorization", "x-request-id", "content-length", *PARSED_HEADERS})


def header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers by lower-cased name: the one parse every endpoint uses.

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
        out[name] = value_b.decode("latin-1")
    return out


def head_size(scope: Scope) -> int:
    """The bytes of the request's target (path and query) and headers, as they were on the wire."""
    size = len(scope.get("raw_path") or scope.get("path", "")) + len(scope.get("query_string") or b"")
    for name, value in scope.get("headers") or ():
        size += len(name) + len(value) + _PER_HEADER
    return size


class HeaderLimit:
    """Refuses requests whose head is larger than ``max_header_bytes`` (431)."""

    def __init__(self, app: ASGIApp, *, max_header_bytes: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (size := head_size(scope)) > self.max_header_bytes:
            await refuse_oversized_head(send, size, self.max_header_bytes)
            return
        await self.app(scope, receive, send)


async def refuse_oversized_head(send: Send, size: int, limit: int) -> None:
    """Answer 431 in the OpenAI error shape and close the connection."""
    body = orjson.dumps(
        {
            "error": {
                "message": f"The request's headers and URL are {size} bytes, more than the limit of {limit} bytes.",
                "type": "invalid_request_error",
                "param": None,
                "code": "request_header_fields_too_large",
            }
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
