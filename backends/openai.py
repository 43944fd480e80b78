"""The OpenAI-compatible HTTP backend, used for hosted OpenAI-style APIs and (as a base) for vLLM.

One shared ``httpx.AsyncClient`` and its transport (built in the app's lifespan) carry every request, so
connections are pooled and kept alive. Completions go straight to the shared transport with a prebuilt
``httpx.Request`` (the client's cookie, auth and redirect layers do nothing for us and cost CPU on the hot
path); health probes and metrics scrapes use the client. httpx errors are translated here into the
gateway's :class:`UpstreamError` tree.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from backends.base import UpstreamResponse
from backends.sse import SSEDecoder
from backends.state import LiveStats
from gateway.config import ModelSpec
from gateway.errors import (
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)


class Replica:
    """One base URL serving the model, with its own live stats and our own count of requests on it.

    ``in_flight`` counts this gateway's requests on the replica, from sending the request until the
    response is read (streams: until the stream is closed); ``started`` counts every request sent, and
    breaks ties between equally loaded replicas so idle ones take turns.
    """

    __slots__ = ("_urls", "base_url", "in_flight", "started", "stats")

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.stats = LiveStats()
        self.in_flight = 0
        self.started = 0
        self._urls: dict[str, httpx.URL] = {}

    @property
    def load(self) -> float:
        """Requests the replica is busy with: ours in flight, or its scraped queue if that is larger."""
        queue = self.stats.queue
        return max(float(self.in_flight), queue.running + queue.waiting)

    def acquire(self) -> None:
        """Count one more of our requests on this replica."""
        self.in_flight += 1
        self.started += 1

    def release(self) -> None:
        """Count one of our requests as finished."""
        self.in_flight -= 1

    def url(self, path: str) -> httpx.URL:
        """The parsed URL of ``path`` on this replica (parsed once: URL parsing showed in profiles)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        return url


def _translate(exc: httpx.HTTPError, backend: str, what: str) -> UpstreamError:
    """Map an httpx failure to the gateway's error tree."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"upstream '{backend}' timed out ({what})", backend=backend)
    detail = str(exc) or type(exc).__name__
    return UpstreamUnavailable(f"upstream '{backend}' unreachable: {detail}", backend=backend)


def rejected_from_response(
    status: int, content: bytes, headers: httpx.Headers, backend: str, secret: str | None = None
) -> UpstreamRejected:
    """Build the pass-through error for an upstream HTTP error, keeping its message and type.

    Some providers echo the credentials they were sent in their error messages: ``secret`` (the
    backend's API key) is cut out of the message, which goes to the client and to the logs."""
    message = f"upstream '{backend}' returned HTTP {status}"
    error_type: str | None = None
    param: str | None = None
    code: str | int | None = None
    try:
        parsed = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        error_type = err.get("type") if isinstance(err.get("type"), str) else None
        param = err.get("param") if isinstance(err.get("param"), str) else None
        raw_code = err.get("code")
        code = raw_code if isinstance(raw_code, str | int) else None
    elif isinstance(err, str):
        message = err
    elif content and parsed is None:
        message = f"{message}: {content[:200].decode('utf-8', 'replace')}"
    out_headers = {"retry-after": headers["retry-after"]} if "retry-after" in headers else {}
    if secret and secret in message:
        message = message.replace(secret, "[redacted]")
    return UpstreamRejected(
        message,
        upstream_status=status,
        error_type=error_type,
        backend=backend,
        param=param,
        code=code,
        headers=out_headers,
    )


class _HTTPStream:
    """An open SSE response; implements :class:`backends.base.UpstreamStream`."""

    def __init__(self, response: httpx.Response, backend: str, replica: Replica, idle_timeout: float) -> None:
        self._response = response
        self._backend = backend
        self._replica: Replica | None = replica  # released (once) when the stream is closed
        self.replica = replica.base_url
        self._idle_timeout = idle_timeout

    async def events(self) -> AsyncIterator[bytes]:
        decoder = SSEDecoder()
        chunks = self._response.aiter_bytes()
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle_timeout):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise UpstreamTimeout(f"upstream '{self._backend}' stream stalled", backend=self._backend) from None
                for data in decoder.feed(chunk):
                    yield data
        except httpx.HTTPError as exc:
            raise _translate(exc, self._backend, "stream") from None
        for data in decoder.flush():
            yield data

    async def aclose(self) -> None:
        replica, self._replica = self._replica, None
        try:
            await self._response.aclose()
        finally:
            if replica is not None:
                replica.release()


def _client_transport(client: httpx.AsyncClient) -> httpx.AsyncBaseTransport:
    """The transport an httpx client sends through (its default one when not given explicitly)."""
    transport: httpx.AsyncBaseTransport = client._transport
    return transport


class OpenAICompatBackend:
    """Any server that speaks the OpenAI HTTP API (``backend: openai``)."""

    def __init__(
        self, spec: ModelSpec, client: httpx.AsyncClient, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self._client = client
        self._transport = transport if transport is not None else _client_transport(client)
        self.replicas = [Replica(u) for u in [spec.base_url or "", *spec.replicas]]
        # The backend's own stats aggregate what routing sees; with one replica they are the same object.
        self.stats = self.replicas[0].stats if len(self.replicas) == 1 else LiveStats()
        t = spec.timeouts
        self._timeout = httpx.Timeout(connect=t.connect, read=t.first_byte, write=t.first_byte, pool=t.connect)
        self._timeout_ext = self._timeout.as_dict()
        self._total = t.total
        self._headers = {"content-type": "application/json", **spec.extra_headers}

    def _request_headers(self) -> dict[str, str]:
        key = self.spec.api_key()
        if key:
            return {**self._headers, "authorization": f"Bearer {key}"}
        return self._headers

    def pick_replica(self) -> Replica:
        """The least-loaded healthy replica (by scraped queue depth and our own in-flight count); among
        equally loaded ones, the one that was sent the fewest requests."""
        if len(self.replicas) == 1:
            return self.replicas[0]
        return min(self.replicas, key=lambda r: (not r.stats.healthy, r.load, r.started))

    def _request(self, url: httpx.URL, body: dict[str, Any]) -> httpx.Request:
        return httpx.Request(
            "POST",
            url,
            content=orjson.dumps(body),
            headers=self._request_headers(),
            extensions={"timeout": self._timeout_ext},
        )

    async def complete(self, path: str, body: dict[str, Any]) -> UpstreamResponse:
        replica = self.pick_replica()
        request = self._request(replica.url(path), body)
        replica.acquire()
        try:
            async with asyncio.timeout(self._total):
                response = await self._transport.handle_async_request(request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError:
            raise UpstreamTimeout(f"upstream '{self.name}' exceeded its total timeout", backend=self.name) from None
        except httpx.HTTPError as exc:
            raise _translate(exc, self.name, "response") from None
        finally:
            replica.release()
        if response.status_code >= 400:
            raise rejected_from_response(
                response.status_code, response.content, response.headers, self.name, self.spec.api_key()
            )
        try:
            parsed = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(f"upstream '{self.name}' sent invalid JSON", backend=self.name) from None
        if not isinstance(parsed, dict):
            raise UpstreamUnavailable(f"upstream '{self.name}' sent a non-object JSON body", backend=self.name)
        return UpstreamResponse(status=response.status_code, body=parsed, replica=replica.base_url)

    async def open_stream(self, path: str, body: dict[str, Any]) -> _HTTPStream:
        replica = self.pick_replica()
        request = self._request(replica.url(path), body)
        replica.acquire()  # released by the stream's aclose(), or below if no stream is returned
        try:
            try:
                async with asyncio.timeout(self._timeout.read or self._total):
                    response = await self._transport.handle_async_request(request)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"upstream '{self.name}' did not start its stream in time", backend=self.name
                ) from None
            except httpx.HTTPError as exc:
                raise _translate(exc, self.name, "stream start") from None
            if response.status_code >= 400:
                try:
                    content = await response.aread()
                except httpx.HTTPError:
                    content = b""
                finally:
                    await response.aclose()
                raise rejected_from_response(
                    response.status_code, content, response.headers, self.name, self.spec.api_key()
                )
        except BaseException:
            replica.release()
            raise
        return _HTTPStream(response, self.name, replica, self.spec.timeouts.between_chunks)

    async def check_health(self) -> bool:
        ok = False
        for replica in self.replicas:
            replica_ok = await self._probe(replica)
            replica.stats.healthy = replica_ok
            ok = ok or replica_ok
        return ok

    async def _probe(self, replica: Replica) -> bool:
        try:
            response = await self._client.get(
                replica.base_url + "/models", headers=self._request_headers(), timeout=self._timeout.connect
            )
        except httpx.HTTPError as exc:
            replica.stats.last_error = str(exc) or type(exc).__name__
            return False
        return response.status_code < 500

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
