"""The OpenAI-compatible HTTP backend, used for hosted OpenAI-style APIs and (as a base) for vLLM.

Every request goes through the one :class:`backends.wire.UpstreamHTTP` client built in the app's
lifespan (pooled keep-alive connections; :class:`backends.h1.H1Client` by default). Transport errors are
translated here into the gateway's :class:`UpstreamError` tree.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from backends.base import UpstreamResponse
from backends.sse import SSEDecoder
from backends.state import LiveStats
from backends.wire import HTTPResponse, TransportError, TransportTimeout, UpstreamHTTP, as_upstream_http
from gateway.config import ModelSpec
from gateway.errors import (
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    import httpx


class Replica:
    """One base URL serving the model, with its own live stats and our own count of requests on it.

    ``in_flight`` counts this gateway's requests on the replica, from sending the request until the
    response is read (streams: until the stream is closed); ``started`` counts every request sent, and
    breaks ties between equally loaded replicas so idle ones take turns.
    """

    __slots__ = ("base_url", "in_flight", "started", "stats")

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.stats = LiveStats()
        self.in_flight = 0
        self.started = 0

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

    def url(self, path: str) -> str:
        """The URL of ``path`` on this replica."""
        return self.base_url + path


def _translate(exc: TransportError, backend: str, what: str) -> UpstreamError:
    """Map a transport failure to the gateway's error tree."""
    if isinstance(exc, TransportTimeout):
        return UpstreamTimeout(f"upstream '{backend}' timed out ({what})", backend=backend)
    detail = str(exc) or type(exc).__name__
    return UpstreamUnavailable(f"upstream '{backend}' unreachable: {detail}", backend=backend)


def rejected_from_response(
    status: int, content: bytes, headers: Mapping[str, str], backend: str, secret: str | None = None
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


class _IdleWatch:
    """The stream's stall timeout with one timer per stream, not one per chunk.

    ``asyncio.timeout`` around each chunk read schedules and cancels a timer per chunk (a tenth of the
    gateway's CPU per relayed chunk in a profile). Here each chunk only records the time; the timer fires
    at most every ``idle`` seconds and re-arms itself while chunks keep coming. It cancels the reading task
    only while that task is waiting for the upstream (not while it writes to a slow client).
    """

    __slots__ = ("_handle", "_idle", "_last", "_loop", "_task", "fired", "waiting")

    def __init__(self, idle: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._idle = idle
        self._last = self._loop.time()
        self.fired = False
        self.waiting = False
        self._handle = self._loop.call_at(self._last + idle, self._check)

    def touch(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        now = self._loop.time()
        if not self.waiting:
            self._last = now  # busy downstream: back-pressure, not an upstream stall
        due = self._last + self._idle
        if now >= due and self._task is not None:
            self.fired = True
            self._task.cancel()
            return
        self._handle = self._loop.call_at(due, self._check)

    def close(self) -> None:
        self._handle.cancel()


class _HTTPStream:
    """An open SSE response; implements :class:`backends.base.UpstreamStream`."""

    def __init__(self, response: HTTPResponse, backend: str, replica: Replica, idle_timeout: float) -> None:
        self._response = response
        self._backend = backend
        self._replica: Replica | None = replica  # released (once) when the stream is closed
        self.replica = replica.base_url
        self._idle_timeout = idle_timeout
        self._watch: _IdleWatch | None = None

    async def events(self) -> AsyncIterator[bytes]:
        decoder = SSEDecoder()
        chunks = self._response.chunks()
        watch = self._watch = _IdleWatch(self._idle_timeout)
        try:
            while True:
                watch.waiting = True
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not watch.fired or task is None or task.uncancel() > 0:
                        raise
                    raise UpstreamTimeout(f"upstream '{self._backend}' stream stalled", backend=self._backend) from None
                finally:
                    watch.waiting = False
                watch.touch()
                for data in decoder.feed(chunk):
                    yield data
        except TransportError as exc:
            raise _translate(exc, self._backend, "stream") from None
        finally:
            watch.close()
        for data in decoder.flush():
            yield data

    async def aclose(self) -> None:
        replica, self._replica = self._replica, None
        if self._watch is not None:
            self._watch.close()
        try:
            await self._response.aclose()
        finally:
            if replica is not None:
                replica.release()


class OpenAICompatBackend:
    """Any server that speaks the OpenAI HTTP API (``backend: openai``).

    ``http`` is the shared upstream client; an ``httpx.AsyncClient`` is accepted too (tests pass one
    with ``httpx.MockTransport``).
    """

    def __init__(self, spec: ModelSpec, http: UpstreamHTTP | httpx.AsyncClient) -> None:
        self.name = spec.name
        self.spec = spec
        self._http = as_upstream_http(http)
        self.replicas = [Replica(u) for u in [spec.base_url or "", *spec.replicas]]
        # The backend's own stats aggregate what routing sees; with one replica they are the same object.
        self.stats = self.replicas[0].stats if len(self.replicas) == 1 else LiveStats()
        t = spec.timeouts
        self._connect_timeout = t.connect
        self._first_byte_timeout = t.first_byte
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

    async def _post(self, url: str, body: dict[str, Any]) -> HTTPResponse:
        return await self._http.request(
            "POST",
            url,
            headers=self._request_headers(),
            body=orjson.dumps(body),
            connect_timeout=self._connect_timeout,
            read_timeout=self._first_byte_timeout,
        )

    async def complete(self, path: str, body: dict[str, Any]) -> UpstreamResponse:
        replica = self.pick_replica()
        replica.acquire()
        try:
            async with asyncio.timeout(self._total):
                response = await self._post(replica.url(path), body)
                content = await response.read()
        except TimeoutError:
            raise UpstreamTimeout(f"upstream '{self.name}' exceeded its total timeout", backend=self.name) from None
        except TransportError as exc:
            raise _translate(exc, self.name, "response") from None
        finally:
            replica.release()
        if response.status >= 400:
            raise rejected_from_response(response.status, content, response.headers, self.name, self.spec.api_key())
        try:
            parsed = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(f"upstream '{self.name}' sent invalid JSON", backend=self.name) from None
        if not isinstance(parsed, dict):
            raise UpstreamUnavailable(f"upstream '{self.name}' sent a non-object JSON body", backend=self.name)
        return UpstreamResponse(status=response.status, body=parsed, replica=replica.base_url)

    async def open_stream(self, path: str, body: dict[str, Any]) -> _HTTPStream:
        replica = self.pick_replica()
        replica.acquire()  # released by the stream's aclose(), or below if no stream is returned
        try:
            try:
                async with asyncio.timeout(self._first_byte_timeout or self._total):
                    response = await self._post(replica.url(path), body)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"upstream '{self.name}' did not start its stream in time", backend=self.name
                ) from None
            except TransportError as exc:
                raise _translate(exc, self.name, "stream start") from None
            if response.status >= 400:
                try:
                    content = await response.read()
                except TransportError:
                    content = b""
                finally:
                    await response.aclose()
                raise rejected_from_response(response.status, content, response.headers, self.name, self.spec.api_key())
        except BaseException:
            replica.release()
            raise
        return _HTTPStream(response, self.name, replica, self.spec.timeouts.between_chunks)

    async def get(self, url: str, read_timeout: float | None = None) -> tuple[int, bytes]:
        """GET ``url`` (health probes, metrics scrapes); the answer must come within ``read_timeout``
        (default: the connect timeout) after connecting. Transport errors and ``TimeoutError`` are raised."""
        read = read_timeout if read_timeout is not None else self._connect_timeout
        async with asyncio.timeout(self._connect_timeout + read):
            response = await self._http.request(
                "GET",
                url,
                headers=self._request_headers(),
                connect_timeout=self._connect_timeout,
                read_timeout=read,
            )
            return response.status, await response.read()

    async def check_health(self) -> bool:
        ok = False
        for replica in self.replicas:
            replica_ok = await self._probe(replica)
            replica.stats.healthy = replica_ok
            ok = ok or replica_ok
        return ok

    async def _probe(self, replica: Replica) -> bool:
        try:
            status, _ = await self.get(replica.base_url + "/models")
        except (TransportError, TimeoutError) as exc:
            replica.stats.last_error = str(exc) or type(exc).__name__
            return False
        return status < 500

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
