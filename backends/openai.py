"""The OpenAI-compatible HTTP backend, used for hosted OpenAI-style APIs and (as a base) for vLLM.

Every request goes through the one :class:`aiohttp.ClientSession` built in the app's lifespan
(:func:`backends.http.build_session`); aiohttp's errors are translated here into the gateway's
:class:`UpstreamError` tree. Timeouts come from the model's ``timeouts``: ``connect`` (a pooled connection
or a new one), ``first_byte`` (the response head; for a complete response also any silence while its
body arrives), ``between_chunks`` (silence inside a stream) and ``total`` (the whole exchange, a stream's
last byte included).

This layer counts the requests in flight: per replica from sending a request until its response is read
(streams: until the stream is closed), and for the backend as the sum over its replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from backends.base import UpstreamResponse
from backends.http import TRANSPORT_ERRORS, proxy_for, scrub, upstream_error
from backends.sse import EventTooLarge, SSEDecoder
from backends.state import LiveStats
from gateway.config import ModelSpec
from gateway.errors import GATEWAY_FAULT_STATUSES, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable

#: An upstream's retry advice, relayed on its error: ``retry-after`` (seconds or an HTTP date), and the two the
#: OpenAI and Anthropic SDKs also read, ``retry-after-ms`` (finer) and ``x-should-retry`` (``true``/``false``,
#: over their own rule, e.g. no retry of a 429 for an exhausted quota).
RETRY_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")
#: How long a stream's connection may take to end its body after [DONE] before it is closed instead.
_DRAIN_AFTER_DONE_S = 1.0


class Replica:
    """One base URL serving the model, with its own live stats (``stats.in_flight``: this gateway's
    requests on it) and the count of requests ever sent, which breaks ties between equally loaded
    replicas so idle ones take turns. Its proxy is read from the environment once, here."""

    __slots__ = ("base_url", "proxy", "started", "stats")

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.stats = LiveStats()
        self.started = 0
        self.proxy = proxy_for(self.base_url)

    @property
    def load(self) -> float:
        """Requests the replica is busy with: ours in flight, or its scraped queue if that is larger."""
        return self.stats.load

    def url(self, path: str) -> str:
        """The URL of ``path`` on this replica."""
        return self.base_url + path


def rejected_from_response(
    status: int, content: bytes, headers: Mapping[str, str], backend: str, secret: str | None = None
) -> UpstreamRejected:
    """The gateway's error for an upstream HTTP error: only the OpenAI fields of its body (``message``,
    ``type``, ``param``, ``code``), scrubbed of addresses and paths (:func:`backends.http.scrub`); the raw
    body goes to ``detail`` (the log). A 5xx's message names the model and the status.

    Some providers echo the credentials they were sent in their error messages: ``secret`` (the
    backend's API key) is cut out of the message and the detail."""
    error_type: str | None = None
    param: str | None = None
    code: str | int | None = None
    text = ""
    try:
        parsed = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        text = str(err.get("message") or "")
        error_type = err.get("type") if isinstance(err.get("type"), str) else None
        param = err.get("param") if isinstance(err.get("param"), str) else None
        raw_code = err.get("code")
        code = raw_code if isinstance(raw_code, str | int) else None
    elif isinstance(err, str):
        text = err
    if secret:
        text = text.replace(secret, "[redacted]")
    text = scrub(text)
    message = f"upstream '{backend}' returned HTTP {status}"
    if status >= 500 or status in GATEWAY_FAULT_STATUSES:  # not the client's fault: the gateway's type and code
        error_type, code = None, f"upstream_http_{status}"
        if text and "traceback" not in text.lower():  # a stack trace is for the operator's log only
            message = f"{message}: {text}"
    elif text:
        message = text
    detail = content[:1000].decode("utf-8", "replace")
    if secret:
        detail = detail.replace(secret, "[redacted]")
    out_headers = {name: headers[name] for name in RETRY_HEADERS if 0 < len(headers.get(name, "")) <= 64}
    return UpstreamRejected(
        message,
        upstream_status=status,
        error_type=scrub(error_type) if error_type else None,
        backend=backend,
        param=scrub(param) if param else None,
        code=scrub(code) if isinstance(code, str) else code,
        headers=out_headers,
        detail=f"HTTP {status}: {detail}",
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

    def __init__(self, response: aiohttp.ClientResponse, backend: OpenAICompatBackend, replica: Replica) -> None:
        self._response = response
        self._backend: OpenAICompatBackend | None = backend  # releases the replica (once) when closed
        self._name = backend.name
        self._replica = replica
        self.replica = replica.base_url
        self._idle_timeout = backend.spec.timeouts.between_chunks
        self._watch: _IdleWatch | None = None
        self._saw_done = False

    async def events(self) -> AsyncIterator[bytes]:
        decoder = SSEDecoder()
        content = self._response.content
        watch = self._watch = _IdleWatch(self._idle_timeout)
        try:
            while True:
                watch.waiting = True
                try:
                    chunk = await content.readany()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not watch.fired or task is None or task.uncancel() > 0:
                        raise
                    raise UpstreamTimeout(f"upstream '{self._name}' stream stalled", backend=self._name) from None
                finally:
                    watch.waiting = False
                if not chunk:
                    break
                watch.touch()
                for data in decoder.feed(chunk):
                    if data == b"[DONE]":
                        self._saw_done = True
                    yield data
        except TRANSPORT_ERRORS as exc:
            raise upstream_error(exc, self._name, "stream") from None
        except EventTooLarge as exc:
            raise UpstreamUnavailable(f"upstream '{self._name}' sent {exc}", backend=self._name) from None
        finally:
            watch.close()
        for data in decoder.flush():
            yield data

    async def aclose(self) -> None:
        backend, self._backend = self._backend, None
        if backend is None:
            return
        if self._watch is not None:
            self._watch.close()
        response = self._response
        try:
            if self._saw_done and not response.content.at_eof():
                # The end of the body (chunked encoding's last, empty chunk) follows [DONE] at once: read
                # it, so the connection goes back to the pool instead of being closed (the openai SDK
                # reads past [DONE] for the same reason). An upstream that keeps talking gets cut off.
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    async with asyncio.timeout(_DRAIN_AFTER_DONE_S):
                        while await response.content.readany():
                            pass
            if response.content.at_eof():
                response.release()  # read to the end: the connection goes back to the pool
            else:
                response.close()  # the upstream sees the disconnect and stops generating
        finally:
            backend.release(self._replica)


class OpenAICompatBackend:
    """Any server that speaks the OpenAI HTTP API (``backend: openai``), reached through ``session``."""

    def __init__(self, spec: ModelSpec, session: aiohttp.ClientSession) -> None:
        self.name = spec.name
        self.spec = spec
        self._session = session
        self.replicas = [Replica(u) for u in [spec.base_url or "", *spec.replicas]]
        # The backend's own stats aggregate what routing sees; with one replica they are the same object.
        self.stats = self.replicas[0].stats if len(self.replicas) == 1 else LiveStats()
        t = spec.timeouts
        self._connect_timeout = t.connect
        self._first_byte_timeout = t.first_byte
        # ``sock_connect``, not ``connect``: aiohttp's ``connect`` also bounds the wait for a free pooled connection,
        # and a pool full of this gateway's own requests is no fault of the upstream's (it would count against its
        # breaker as "timed out connecting"); that wait is bounded by first_byte or total instead.
        # A complete response: the head within first_byte, and no longer silence while the body arrives.
        self._timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.first_byte)
        # A stream: the head within first_byte (open_stream), silences bounded by the stream's own watch.
        self._stream_timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect)
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

    def acquire(self) -> Replica:
        """Pick a replica and count one more request on it (and on the backend, when they differ)."""
        replica = self.pick_replica()
        replica.stats.in_flight += 1
        replica.started += 1
        if replica.stats is not self.stats:
            self.stats.in_flight += 1
        return replica

    def release(self, replica: Replica) -> None:
        """Count one request on ``replica`` as finished."""
        replica.stats.in_flight -= 1
        if replica.stats is not self.stats:
            self.stats.in_flight -= 1

    async def _post(
        self, replica: Replica, path: str, body: dict[str, Any], timeouts: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        """Send ``body``; returns once the response head arrived (the body is the caller's to read)."""
        return await self._session.post(
            replica.url(path),
            data=orjson.dumps(body),
            headers=self._request_headers(),
            timeout=timeouts,
            proxy=replica.proxy,
        )

    async def complete(self, path: str, body: dict[str, Any]) -> UpstreamResponse:
        replica = self.acquire()
        try:
            response = await self._post(replica, path, body, self._timeout)
            async with response:
                content = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise upstream_error(exc, self.name, "response") from None
        finally:
            self.release(replica)
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
        replica = self.acquire()  # released by the stream's aclose(), or below if no stream is returned
        try:
            try:
                async with asyncio.timeout(self._first_byte_timeout):
                    response = await self._post(replica, path, body, self._stream_timeout)
            except aiohttp.ClientError as exc:  # its own timeouts included (connecting)
                raise upstream_error(exc, self.name, "stream start") from None
            except TimeoutError:
                raise UpstreamTimeout(
                    f"upstream '{self.name}' did not start its stream in time", backend=self.name
                ) from None
            if response.status >= 400:
                try:
                    content = await response.read()
                except TRANSPORT_ERRORS:
                    content = b""
                finally:
                    response.release()
                raise rejected_from_response(response.status, content, response.headers, self.name, self.spec.api_key())
        except BaseException:
            self.release(replica)
            raise
        return _HTTPStream(response, self, replica)

    async def get(self, replica: Replica, url: str, read_timeout: float | None = None) -> tuple[int, bytes]:
        """GET ``url`` on ``replica`` (health probes, metrics scrapes); the answer must come within
        ``read_timeout`` (default: the connect timeout) after connecting. Raises :data:`TRANSPORT_ERRORS`."""
        read = read_timeout if read_timeout is not None else self._connect_timeout
        timeout = aiohttp.ClientTimeout(
            total=self._connect_timeout + read, connect=self._connect_timeout, sock_read=read
        )
        async with self._session.get(
            url,
            headers=self._request_headers(),
            timeout=timeout,
            proxy=replica.proxy,
        ) as response:
            return response.status, await response.read()

    async def check_health(self) -> bool:
        ok = False
        for replica in self.replicas:
            replica_ok = await self._probe(replica)
            replica.stats.healthy = replica_ok
            ok = ok or replica_ok
        return ok

    def pool_full(self, replica: Replica) -> bool:
        """Every pooled connection to ``replica`` carries one of this gateway's requests: a probe or scrape would
        only wait for one, and its failing then says nothing about the upstream."""
        connector = self._session.connector
        limit = connector.limit_per_host if connector is not None else 0
        return bool(limit) and replica.stats.in_flight >= limit

    async def _probe(self, replica: Replica) -> bool:
        if self.pool_full(replica):  # busy answering: no verdict, the state stays
            return replica.stats.healthy
        try:
            status, _ = await self.get(replica, replica.base_url + "/models")
        except TRANSPORT_ERRORS as exc:
            replica.stats.last_error = str(exc) or type(exc).__name__
            return False
        # A refused key (401, 403) fails every request; a server without /models answers 404 and may still serve.
        return status < 500 and status not in (401, 403)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
