"""The HTTP client interface backends send through, its errors, and the httpx adapter.

Backends need very little HTTP: send a request to an upstream's base URL, read a whole body or iterate
its chunks, close. :class:`UpstreamHTTP` is that much and no more. Two implementations:

* :class:`backends.h1.H1Client`: HTTP/1.1 keep-alive pools on asyncio protocols with the ``httptools``
  parser (what uvicorn parses with). The gateway's default; a request costs a few tens of microseconds
  of CPU, against ~200 for aiohttp and ~350 for httpx (``bench/upstream_client.py``).
* :class:`HttpxUpstream`: any ``httpx.AsyncClient``: tests drive backends with ``httpx.MockTransport``
  through it, and ``server.upstream_client: httpx`` selects it for proxies (``HTTPS_PROXY``) or HTTP/2.

Both raise only the :class:`TransportError` tree below, which backends translate into the gateway's
``UpstreamError`` tree at their boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx


class TransportError(Exception):
    """The request could not be completed at the HTTP level."""


class ConnectError(TransportError):
    """No connection could be made (refused, unreachable, DNS, TLS handshake)."""


class ReadError(TransportError):
    """The connection failed or the upstream broke the protocol after the request was sent."""


class TransportTimeout(TransportError):
    """A timeout expired."""


class ConnectTimeout(TransportTimeout, ConnectError):
    """Connecting took longer than the connect timeout."""


class ReadTimeout(TransportTimeout):
    """The response (head or next chunk) took longer than the read timeout."""


class HTTPResponse(Protocol):
    """A response whose head has arrived; its body is read with :meth:`read` or :meth:`chunks`."""

    status: int

    @property
    def headers(self) -> Mapping[str, str]:
        """The response's headers, by lower-case name."""
        ...

    async def read(self) -> bytes:
        """The whole body (then the connection goes back to its pool)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        ...

    async def aclose(self) -> None:
        """Release the connection; an unfinished response is aborted (the upstream sees a disconnect)."""
        ...


class UpstreamHTTP(Protocol):
    """Sends requests to upstream servers over pooled connections."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> HTTPResponse:
        """Send a request; return once the response head arrived (``read_timeout`` bounds the wait)."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...


def as_upstream_http(client: UpstreamHTTP | httpx.AsyncClient) -> UpstreamHTTP:
    """``client`` itself, or an :class:`HttpxUpstream` around it when it is an ``httpx.AsyncClient``."""
    if hasattr(client, "build_request") and hasattr(client, "send"):
        return HttpxUpstream(client)  # type: ignore[arg-type]
    return client


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        import httpx

        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise _from_httpx(exc) from exc
        finally:
            await self._response.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            raise _from_httpx(exc) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """:class:`UpstreamHTTP` on an ``httpx.AsyncClient`` (its transport, proxies and limits)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> HTTPResponse:
        import httpx

        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout)
        request = self.client.build_request(method, url, headers=dict(headers), content=body, timeout=timeout)
        try:
            response = await self.client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise _from_httpx(exc) from exc
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        await self.client.aclose()


def _from_httpx(exc: Any) -> TransportError:
    import httpx

    message = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return ConnectTimeout(message)
    if isinstance(exc, httpx.TimeoutException):
        return ReadTimeout(message)
    if isinstance(exc, httpx.ConnectError):
        return ConnectError(message)
    return ReadError(message)
