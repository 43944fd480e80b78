"""The backends' HTTP client (aiohttp, as ``backends.http`` configures it) against scripted raw servers:
keep-alive pools, no resent POST, timeouts, disconnects, limits, TLS and proxies.

The servers here speak HTTP by hand (``tests.helpers.upstream.RawServer``), so what goes over the wire is
exactly what the test wrote.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from backends import build_session
from backends.openai import OpenAICompatBackend
from gateway.config import ModelSpec
from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from tests.helpers.servers import REPO_ROOT
from tests.helpers.upstream import RawServer, http_reply, refused_url

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
REPLY = b'{"id": "x", "choices": []}'


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def backend(session: aiohttp.ClientSession, url: str, **kw: object) -> OpenAICompatBackend:
    spec = ModelSpec.model_validate({"name": "m", "backend": "openai", "base_url": url + "/v1", **kw})
    return OpenAICompatBackend(spec, session)


async def ok(request: bytes, reader: Reader, writer: Writer) -> bool:
    writer.write(http_reply(REPLY))
    await writer.drain()
    return True


async def test_requests_reuse_one_kept_alive_connection(session: aiohttp.ClientSession) -> None:
    async with RawServer(ok) as server:
        b = backend(session, server.url)
        for _ in range(5):
            assert (await b.complete("/chat/completions", {"q": 1})).body == {"id": "x", "choices": []}
    assert server.connections == 1
    head = server.requests[0]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in head
    assert head.endswith(b'{"q":1}')


async def test_a_post_is_never_sent_twice_when_the_connection_drops_after_it(
    session: aiohttp.ClientSession,
) -> None:
    """The upstream read the request, then the connection broke: it may have started (and billed) the
    work, so the request fails instead of going out again on a new connection."""
    served = 0

    async def first_ok_then_drop(request: bytes, reader: Reader, writer: Writer) -> bool:
        nonlocal served
        served += 1
        if served == 1:
            writer.write(http_reply(REPLY))  # keep-alive promised...
            await writer.drain()
            return True
        return False  # ...then the second request on it is read and the connection closed, unanswered

    async with RawServer(first_ok_then_drop) as server:
        b = backend(session, server.url)
        await b.complete("/chat/completions", {})
        with pytest.raises(UpstreamUnavailable):
            await b.complete("/chat/completions", {})
        await asyncio.sleep(0.1)
    assert len(server.requests) == 2 and server.connections == 1
    assert b.stats.in_flight == 0


async def test_a_connection_the_upstream_closed_while_idle_is_not_used(session: aiohttp.ClientSession) -> None:
    """A server that closes idle keep-alive connections (uvicorn does after 5 s): each next request goes
    out once, on a new connection, and succeeds."""
    async with RawServer(ok, idle_timeout=0.05) as server:
        b = backend(session, server.url)
        for _ in range(3):
            await b.complete("/chat/completions", {})
            await asyncio.sleep(0.2)  # the close reaches the client while the connection idles in its pool
        s = await b.open_stream("/chat/completions", {"stream": True})
        await s.aclose()
    assert len(server.requests) == 4 and server.connections == 4


async def test_a_close_delimited_body_is_read_and_connection_close_honoured(session: aiohttp.ClientSession) -> None:
    async def old_style(request: bytes, reader: Reader, writer: Writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/json\r\n\r\n" + REPLY)
        await writer.drain()
        return False

    async with RawServer(old_style) as server:
        b = backend(session, server.url)
        for _ in range(2):
            assert (await b.complete("/chat/completions", {})).body["id"] == "x"
    assert server.connections == 2


async def test_chunked_stream_arrives_chunk_by_chunk_then_the_connection_is_reused(
    session: aiohttp.ClientSession,
) -> None:
    go_on = asyncio.Event()

    async def stream(request: bytes, reader: Reader, writer: Writer) -> bool:
        if b'"stream":true' not in request:
            return await ok(request, reader, writer)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(chunk(b'data: {"a":1}\n\n'))
        await writer.drain()
        await go_on.wait()  # the second event only after the client saw the first
        writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return True

    async with RawServer(stream) as server:
        b = backend(session, server.url)
        s = await b.open_stream("/chat/completions", {"stream": True})
        events = s.events()
        assert await anext(events) == b'{"a":1}'
        go_on.set()
        assert [e async for e in events] == [b"[DONE]"]
        await s.aclose()
        await b.complete("/chat/completions", {})
    assert server.connections == 1


async def test_a_stream_closed_at_done_keeps_its_connection(session: aiohttp.ClientSession) -> None:
    """The pipeline stops reading at [DONE]; the body's last chunk comes a moment later. The connection
    still goes back to the pool."""

    async def done_then_end(request: bytes, reader: Reader, writer: Writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(chunk(b'data: {"a":1}\n\n') + chunk(b"data: [DONE]\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async with RawServer(done_then_end) as server:
        b = backend(session, server.url)
        for _ in range(3):
            s = await b.open_stream("/chat/completions", {"stream": True})
            async for event in s.events():
                if event == b"[DONE]":
                    break
            await s.aclose()
    assert len(server.requests) == 3 and server.connections == 1


async def test_a_silent_upstream_times_out_and_sees_the_client_go(session: aiohttp.ClientSession) -> None:
    hung_up = asyncio.Event()

    async def silent(request: bytes, reader: Reader, writer: Writer) -> bool:
        await reader.read()  # returns at EOF: the client gave up on us
        hung_up.set()
        return False

    async with RawServer(silent) as server:
        with pytest.raises(UpstreamTimeout):
            await backend(session, server.url, timeouts={"first_byte": 0.1}).complete("/chat/completions", {})
        await asyncio.wait_for(hung_up.wait(), 5)


async def test_garbage_is_unavailable(session: aiohttp.ClientSession) -> None:
    async def garbage(request: bytes, reader: Reader, writer: Writer) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        return True

    async with RawServer(garbage) as server:
        with pytest.raises(UpstreamUnavailable):
            await backend(session, server.url, timeouts={"first_byte": 2}).complete("/chat/completions", {})


async def test_closing_an_unfinished_stream_disconnects_the_upstream(session: aiohttp.ClientSession) -> None:
    gone = asyncio.Event()

    async def endless(request: bytes, reader: Reader, writer: Writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(chunk(b'data: {"t":1}\n\n'))
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            gone.set()
        return False

    async with RawServer(endless) as server:
        b = backend(session, server.url)
        s = await b.open_stream("/chat/completions", {"stream": True})
        assert await anext(s.events()) == b'{"t":1}'
        await s.aclose()
        await asyncio.wait_for(gone.wait(), 5)
    assert b.stats.in_flight == 0


async def test_cancelling_a_request_disconnects_the_upstream(session: aiohttp.ClientSession) -> None:
    arrived = asyncio.Event()
    eof = asyncio.Event()

    async def hang(request: bytes, reader: Reader, writer: Writer) -> bool:
        arrived.set()
        await reader.read()  # returns at EOF: the client hung up
        eof.set()
        return False

    async with RawServer(hang) as server:
        task = asyncio.create_task(backend(session, server.url).complete("/chat/completions", {}))
        await asyncio.wait_for(arrived.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(eof.wait(), 5)


async def test_connections_per_origin_are_bounded() -> None:
    release = asyncio.Event()

    async def slow(request: bytes, reader: Reader, writer: Writer) -> bool:
        await release.wait()
        return await ok(request, reader, writer)

    session = build_session(max_connections=1, keepalive_seconds=30)
    try:
        async with RawServer(slow) as server:
            b = backend(session, server.url)
            tasks = [asyncio.create_task(b.complete("/chat/completions", {})) for _ in range(3)]
            await asyncio.sleep(0.2)
            assert len(server.requests) == 1  # the others wait for the one connection
            release.set()
            assert [(await t).body["id"] for t in tasks] == ["x"] * 3
        assert server.connections == 1
    finally:
        await session.close()


async def test_idle_connections_close_after_keepalive_seconds() -> None:
    session = build_session(max_connections=10, keepalive_seconds=0.1)
    try:
        async with RawServer(ok) as server:
            b = backend(session, server.url)
            await b.complete("/chat/completions", {})
            await asyncio.sleep(0.5)
            await b.complete("/chat/completions", {})
        assert server.connections == 2
    finally:
        await session.close()


async def test_refused_connection_is_unavailable(session: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        await backend(session, refused_url()).complete("/chat/completions", {})


# -- TLS ------------------------------------------------------------------------------------------------


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """An HTTPS server for ``localhost`` whose certificate a fresh test CA signed; yields (port, CA file)."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)

    async def serve(reader: Reader, writer: Writer) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")),
                    0,
                )
                await reader.readexactly(length)
                writer.write(http_reply(b'{"tls": true}'))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()

    server = await asyncio.start_server(serve, "localhost", 0, ssl=server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    yield server.sockets[0].getsockname()[1], ca_file
    server.close()


async def test_https_verifies_the_certificate(session: aiohttp.ClientSession, tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    with pytest.raises(UpstreamUnavailable) as caught:  # the test CA is not in the trust store
        await backend(session, f"https://localhost:{port}").complete("/chat/completions", {})
    assert "certificate" in caught.value.detail  # for the log; the client's message names only the model


async def test_https_with_a_ca_the_environment_trusts(tls_server: tuple[int, Path]) -> None:
    """``SSL_CERT_FILE`` (read when the process starts, as OpenSSL does) makes the CA trusted."""
    port, ca_file = tls_server
    script = textwrap.dedent(
        f"""
        import asyncio
        from backends import build_session
        from backends.openai import OpenAICompatBackend
        from gateway.config import ModelSpec

        async def main():
            session = build_session(max_connections=10, keepalive_seconds=30)
            spec = ModelSpec(name="m", backend="openai", base_url="https://localhost:{port}/v1")
            try:
                print((await OpenAICompatBackend(spec, session).complete("/chat/completions", {{}})).body)
            finally:
                await session.close()

        asyncio.run(main())
        """
    )
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file), "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    assert out.decode().strip() == "{'tls': True}"


# -- proxies --------------------------------------------------------------------------------------------


async def test_http_proxy_from_the_environment(session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    async with RawServer(ok) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://user:pw@127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        via_proxy = backend(session, "http://upstream.invalid:8000")
        assert (await via_proxy.complete("/chat/completions", {})).body["id"] == "x"
        monkeypatch.setenv("NO_PROXY", "upstream.invalid")
        direct = backend(session, "http://upstream.invalid:8000", timeouts={"connect": 2})
        with pytest.raises(UpstreamUnavailable):  # not through the proxy: the name does not resolve
            await direct.complete("/chat/completions", {})
    [request] = proxy.requests
    assert request.startswith(b"POST http://upstream.invalid:8000/v1/chat/completions HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic dXNlcjpwdw==\r\n" in request


async def test_https_proxy_from_the_environment_tunnels(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse_tunnel(request: bytes, reader: Reader, writer: Writer) -> bool:
        writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        return False

    async with RawServer(refuse_tunnel) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with pytest.raises(UpstreamUnavailable):
            await backend(session, "https://api.example.invalid").complete("/chat/completions", {})
    assert proxy.requests[0].startswith(b"CONNECT api.example.invalid:443 HTTP/1.1\r\n")


def test_a_url_in_a_log_line_holds_no_credentials() -> None:
    """A model's ``base_url`` with a password in it (``http://user:secret@host/v1``) reached the log whole when its
    vLLM metrics could not be scraped."""
    from backends.http import shown_url

    assert shown_url("http://user:s3cret@10.0.0.5:8000/v1?api_key=k") == "http://10.0.0.5:8000/v1"
    assert shown_url("https://vllm.internal/v1") == "https://vllm.internal/v1"
