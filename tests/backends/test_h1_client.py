"""The built-in upstream HTTP/1.1 client against real sockets: pooling, framing, failures, TLS.

Each test runs a scripted raw asyncio server (no HTTP library on the server side), so what goes over the
wire is exactly what the test wrote.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme

from backends.h1 import H1Client
from backends.wire import ConnectError, ReadError, ReadTimeout

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class Server:
    """Reads requests (head + Content-Length body) and lets ``handler`` answer; counts connections.

    The handler returns False to close the connection after its answer."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                if not await self.handler(head + body, reader, writer):
                    break
        finally:
            writer.close()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


def reply(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


async def ok(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(reply(b'{"ok": true}'))
    await writer.drain()
    return True


@pytest.fixture
async def client() -> AsyncIterator[H1Client]:
    c = H1Client(keepalive_seconds=30)
    yield c
    await c.aclose()


async def post(client: H1Client, url: str, body: bytes = b'{"q": 1}', **kw: float) -> tuple[int, bytes]:
    response = await client.request("POST", url, headers={"content-type": "application/json"}, body=body, **kw)
    return response.status, await response.read()


async def test_requests_reuse_one_kept_alive_connection(client: H1Client) -> None:
    async with Server(ok) as server:
        for _ in range(5):
            assert await post(client, server.url) == (200, b'{"ok": true}')
    assert server.connections == 1
    head = server.requests[0]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}\r\n".encode() in head
    assert b"content-length: 8\r\n" in head and head.endswith(b'{"q": 1}')


async def test_headers_and_status_of_an_error_reach_the_caller(client: H1Client) -> None:
    async def limited(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        body = b'{"error": {"message": "slow down"}}'
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        return True

    async with Server(limited) as server:
        response = await client.request("POST", server.url, headers={}, body=b"{}")
        assert response.status == 429
        assert response.headers["retry-after"] == "7"
        assert b"slow down" in await response.read()


async def test_chunked_stream_arrives_chunk_by_chunk(client: H1Client) -> None:
    go_on = asyncio.Event()

    async def stream(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"6\r\ndata 1\r\n")
        await writer.drain()
        await go_on.wait()  # the second chunk only after the client saw the first
        writer.write(b"6\r\ndata 2\r\n0\r\n\r\n")
        await writer.drain()
        return True

    async with Server(stream) as server:
        response = await client.request("POST", server.url, headers={}, body=b"{}")
        chunks = response.chunks()
        assert await anext(chunks) == b"data 1"
        go_on.set()
        assert [c async for c in chunks] == [b"data 2"]
        assert await post(client, server.url) != (0, b"")  # the connection went back to the pool
    assert server.connections == 1


async def test_connection_close_is_honoured_and_a_close_delimited_body_is_read(client: H1Client) -> None:
    async def old_style(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()
        return False

    async with Server(old_style) as server:
        assert await post(client, server.url) == (200, b"until the end")
        assert await post(client, server.url) == (200, b"until the end")
    assert server.connections == 2


async def test_a_stale_pooled_connection_is_replaced_transparently(client: H1Client) -> None:
    async def once(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply(b"{}"))  # keep-alive promised, then the server drops it (idle timeout race)
        await writer.drain()
        return False

    async with Server(once) as server:
        assert await post(client, server.url) == (200, b"{}")
        await asyncio.sleep(0.05)  # the close reaches the client while the connection idles in the pool
        assert await post(client, server.url) == (200, b"{}")
    assert server.connections == 2


async def test_idle_connections_expire_after_keepalive_seconds() -> None:
    client = H1Client(keepalive_seconds=0.05)
    try:
        async with Server(ok) as server:
            await post(client, server.url)
            await asyncio.sleep(0.1)
            await post(client, server.url)
        assert server.connections == 2
    finally:
        await client.aclose()


async def test_refused_connection_is_a_connect_error(client: H1Client) -> None:
    async with Server(ok) as server:
        url = server.url
    with pytest.raises(ConnectError):
        await post(client, url, connect_timeout=1)


async def test_silent_upstream_is_a_read_timeout_and_the_connection_is_dropped(client: H1Client) -> None:
    hung_up = asyncio.Event()

    async def silent(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await reader.read()  # returns at EOF: the client gave up on us
        hung_up.set()
        return False

    async with Server(silent) as server:
        with pytest.raises(ReadTimeout):
            await post(client, server.url, read_timeout=0.1)
        await asyncio.wait_for(hung_up.wait(), 5)


async def test_garbage_is_a_read_error(client: H1Client) -> None:
    async def garbage(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        return True

    async with Server(garbage) as server:
        with pytest.raises(ReadError):
            await post(client, server.url, read_timeout=2)


async def test_closing_an_unfinished_stream_disconnects_the_upstream(client: H1Client) -> None:
    gone = asyncio.Event()

    async def endless(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"5\r\ntoken\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            gone.set()
        return False

    async with Server(endless) as server:
        response = await client.request("POST", server.url, headers={}, body=b"{}")
        chunks = response.chunks()
        assert await anext(chunks) == b"token"
        await response.aclose()
        await asyncio.wait_for(gone.wait(), 5)


async def test_cancelling_a_request_disconnects_the_upstream(client: H1Client) -> None:
    arrived = asyncio.Event()
    eof = asyncio.Event()

    async def hang(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        arrived.set()
        await reader.read()  # returns at EOF: the client hung up
        eof.set()
        return False

    async with Server(hang) as server:
        task = asyncio.create_task(post(client, server.url))
        await asyncio.wait_for(arrived.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(eof.wait(), 5)


async def test_connections_per_origin_are_bounded() -> None:
    client = H1Client(max_connections=1)
    release = asyncio.Event()

    async def slow(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(reply(b"{}"))
        await writer.drain()
        return True

    try:
        async with Server(slow) as server:
            tasks = [asyncio.create_task(post(client, server.url, connect_timeout=5)) for _ in range(3)]
            await asyncio.sleep(0.1)
            assert len(server.requests) == 1  # the others wait for the one connection
            release.set()
            assert [await t for t in tasks] == [(200, b"{}")] * 3
        assert server.connections == 1
    finally:
        await client.aclose()


async def test_https_with_sni_and_certificate_verification() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply(b'{"tls": true}'))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "localhost", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    good = H1Client(tls_context=trusting)
    strict = H1Client()  # the system trust store does not know the test CA
    try:
        response = await good.request("GET", f"https://localhost:{port}/v1/models", headers={})
        assert (response.status, await response.read()) == (200, b'{"tls": true}')
        with pytest.raises(ConnectError):
            await strict.request("GET", f"https://localhost:{port}/v1/models", headers={}, connect_timeout=5)
    finally:
        await good.aclose()
        await strict.aclose()
        server.close()
