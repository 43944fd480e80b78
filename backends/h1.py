"""A lean HTTP/1.1 client for upstream calls: keep-alive pools on asyncio protocols, parsed by httptools.

The gateway's CPU per proxied request is mostly HTTP plumbing, and general-purpose clients pay for
features an upstream call never uses (redirects, cookies, proxies, middleware, auth flows, per-request
object graphs). ``python bench/upstream_client.py`` (16 concurrent keep-alive requests) measured on the
project's 2-core VM: 135 us of client CPU per request here, 278 us with aiohttp, 2,577 us with httpx.
What it does:

* one pool per origin (scheme, host, port): idle connections reused last-in first-out, closed after
  ``keepalive_seconds`` idle, at most ``max_connections`` per origin (callers wait for a free one);
* plain TCP or TLS (system trust store, SNI); ``Content-Length`` and chunked bodies (httptools parses
  both); responses delimited by the connection closing;
* a request sent on a reused connection that the server had already closed (idle-timeout race) is sent
  again once on a new connection, which is safe because no byte of a response was received;
* bodies are buffered per response, not per connection, so a connection goes back to its pool the moment
  its response is complete; a slow reader pauses the socket above 1 MiB buffered (back-pressure);
* cancelling a request or closing an unfinished response aborts the connection, so the upstream sees the
  disconnect and stops generating.

It raises only :mod:`backends.wire` errors. For proxies or HTTP/2, use ``server.upstream_client: httpx``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

from backends.wire import ConnectError, ConnectTimeout, HTTPResponse, ReadError, ReadTimeout, TransportError

_HIGH_WATER = 1 << 20  # buffered response bytes above which the socket stops being read


class _Response:
    """One response: head fields, and a body buffer filled by the connection's parser callbacks."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_loop",
        "_paused",
        "_waiter",
        "head",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        self.head: asyncio.Future[None] = conn.loop.create_future()
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names, filled while the head is parsed
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- fed by the connection ---------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause()
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._conn = None  # the connection is back in its pool (or closed): nothing to abort any more
        self._wake()

    def fail(self, error: TransportError) -> None:
        if self._done:
            return
        self._error = error
        self._conn = None
        if not self.head.done():
            self.head.set_exception(error)
        self._wake()

    # -- read by the backend -----------------------------------------------------------------------------

    async def _next(self) -> bytes | None:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return None
            if self._conn is None:  # aborted by its reader
                raise ReadError("the response was closed")
            self._waiter = self._loop.create_future()
            await self._waiter
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered <= _HIGH_WATER // 2 and self._conn is not None:
            self._paused = False
            self._conn.resume()
        return data

    async def read(self) -> bytes:
        try:
            if self._done and self._error is None:
                out = b"".join(self._chunks)
                self._chunks.clear()
                return out
            parts: list[bytes] = []
            while (data := await self._next()) is not None:
                parts.append(data)
            return b"".join(parts)
        except BaseException:
            self._abort()
            raise

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while (data := await self._next()) is not None:
                yield data
        except BaseException:
            self._abort()
            raise

    async def aclose(self) -> None:
        self._abort()

    def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not self._done:
            conn.abort()


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; httptools calls the ``on_*`` methods while parsing a response."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False  # carried a request before (a failure before any byte may be a stale close)
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._response: _Response | None = None
        self._received = False
        self._headers_done = False
        self._keep_alive = True

    # -- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        if self._response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.abort()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ReadError(f"invalid HTTP response: {exc}"))
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if response is None:
            return
        if self._headers_done and not self._has_length():
            self._on_complete()  # a body delimited by the connection closing
            return
        if not self._received and self.used:
            self._fail(_StaleError())
        else:
            self._fail(ReadError(f"upstream closed the connection: {exc}" if exc else "upstream closed the connection"))

    # -- httptools callbacks ----------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        self._response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        self._headers_done = True
        response.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        if not response.head.done():
            response.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._response.feed(body)

    def on_message_complete(self) -> None:
        self._on_complete()

    # -- internals --------------------------------------------------------------------------------------

    def _has_length(self) -> bool:
        assert self._response is not None
        headers = self._response.headers
        return "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()

    def _on_complete(self) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        if not response.head.done():
            response.head.set_result(None)
        keep = self._keep_alive and not self.closed
        response.finish()
        if keep:
            self.pool.release(self)
        else:
            self.abort()

    def _fail(self, error: TransportError) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.fail(error)
        self.pool.forget(self)

    def start(self, head: bytes, body: bytes | None) -> _Response:
        """Write a request and return its (pending) response."""
        assert self.transport is not None
        response = _Response(self)
        self._response = response
        self._received = False
        self._headers_done = False
        self._keep_alive = True
        # The parser carries over from the previous response on this connection: llhttp parses one
        # keep-alive message after another (a connection whose response failed is never reused).
        self.transport.write(head + body if body else head)
        return response

    def usable(self, now: float, keepalive: float) -> bool:
        transport = self.transport
        return (
            not self.closed
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since < keepalive
        )

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close at once (RST if data is pending): the upstream sees the client go."""
        self._response = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self.pool.forget(self)


class _StaleError(ReadError):
    """Raised inside the client for the stale-connection retry; never escapes it."""


class _Pool:
    """The connections to one origin."""

    def __init__(self, client: H1Client, scheme: str, host: str, port: int) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.tls = client.tls_context() if scheme == "https" else None
        self.idle: deque[_Connection] = deque()
        self.active: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, connect_timeout: float | None) -> _Connection:
        now = time.monotonic()
        keepalive = self.client.keepalive_seconds
        while self.idle:
            conn = self.idle.pop()
            if conn.usable(now, keepalive):
                self.active.add(conn)
                return conn
            conn.abort()
        while len(self.active) >= self.client.max_connections:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(connect_timeout):
                    await waiter
            except TimeoutError:
                raise ConnectTimeout(f"no free connection to {self.host}:{self.port} in time") from None
            if self.idle:
                return await self.acquire(connect_timeout)
        return await self._connect(connect_timeout)

    async def _connect(self, connect_timeout: float | None) -> _Connection:
        placeholder = _Connection(self)  # counts against the limit while connecting
        self.active.add(placeholder)
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        finally:
            self.active.discard(placeholder)
            self._wake_one()
        self.active.add(conn)
        return conn

    def release(self, conn: _Connection) -> None:
        conn.used = True
        self.active.discard(conn)
        now = time.monotonic()
        conn.idle_since = now
        idle = self.idle
        idle.append(conn)
        # The oldest idle connection is at the left; retire it once it outlived the keep-alive time.
        if len(idle) > 1 and now - idle[0].idle_since >= self.client.keepalive_seconds:
            idle.popleft().abort()
        self._wake_one()

    def forget(self, conn: _Connection) -> None:
        if conn in self.active:
            self.active.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in [*self.idle, *self.active]:
            conn.abort()
        self.idle.clear()


class H1Client:
    """:class:`backends.wire.UpstreamHTTP` over HTTP/1.1 keep-alive connections (see the module doc)."""

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        keepalive_seconds: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, tuple[_Pool, bytes]] = {}
        self._tls = tls_context

    def tls_context(self) -> ssl.SSLContext:
        """One TLS context for every pool (building one costs milliseconds): the system's trust store
        unless one was given."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _target(self, url: str) -> tuple[_Pool, bytes]:
        """The pool for ``url``'s origin and the request-line target plus Host header, parsed once."""
        found = self._targets.get(url)
        if found is not None:
            return found
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConnectError(f"unsupported upstream URL: {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self, scheme, parts.hostname, port)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        default_port = port == (443 if scheme == "https" else 80)
        host = parts.hostname if default_port else f"{parts.hostname}:{port}"
        if ":" in parts.hostname:  # IPv6 literal
            host = f"[{parts.hostname}]" if default_port else f"[{parts.hostname}]:{port}"
        prefix = f"{path} HTTP/1.1\r\nhost: {host}\r\n".encode("latin-1")
        if len(self._targets) < 10_000:
            self._targets[url] = (pool, prefix)
        return pool, prefix

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
        pool, prefix = self._target(url)
        lines = [method.encode("latin-1"), b" ", prefix]
        for name, value in headers.items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body is not None:
            lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        head = b"".join(lines)
        for attempt in (0, 1):
            conn = await pool.acquire(connect_timeout)
            response = conn.start(head, body)
            try:
                async with asyncio.timeout(read_timeout):
                    await response.head
            except _StaleError:
                if attempt == 0:
                    continue
                raise ReadError(f"{pool.host}:{pool.port} closed the connection before answering") from None
            except TimeoutError:
                conn.abort()
                raise ReadTimeout(f"{pool.host}:{pool.port} sent no response in {read_timeout}s") from None
            except BaseException:
                conn.abort()
                raise
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._targets.clear()
