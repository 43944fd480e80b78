"""Slow and idle clients are timed out, and connections are capped (issue 20), over real sockets: connections
that trickle their headers or body, or sit idle, are closed after the configured deadlines while normal
traffic is served meanwhile; beyond ``max_connections`` a request gets a 503 instead of resources."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.http_limits import BODY_TIMEOUT_ENV, HEAD_TIMEOUT_ENV, GuardedHttpToolsProtocol
from tests.hardening.gateways import master_key, sim_gateway
from tests.hardening.support import LedgerFile
from tests.helpers.servers import RunningGateway

HEAD_S = 0.6
BODY_S = 0.8
KEEPALIVE_S = 1
BODY = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    mp = pytest.MonkeyPatch()
    mp.setenv(HEAD_TIMEOUT_ENV, str(HEAD_S))
    mp.setenv(BODY_TIMEOUT_ENV, str(BODY_S))
    try:
        with (
            master_key(None),
            sim_gateway(
                tmp_path_factory.mktemp("slow"),
                http=GuardedHttpToolsProtocol,
                timeout_keep_alive=KEEPALIVE_S,
                limit_concurrency=40,
            ) as running,
        ):
            yield running
    finally:
        mp.undo()


async def open_conn(gw: RunningGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = gw.base_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def closed_after(reader: asyncio.StreamReader, limit_s: float = 10) -> tuple[float, bytes]:
    """Seconds until the server closes the connection, and what it sent. A close while the client is still
    sending reaches it as a reset rather than an end of stream (the server's socket held unread bytes): closed too."""
    t0 = time.monotonic()
    data = b""
    async with asyncio.timeout(limit_s):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return time.monotonic() - t0, data


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float = 0.1) -> None:
    try:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every_s)
    except (ConnectionError, OSError):
        return


async def normal_traffic(gw: RunningGateway, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=10) as c:
        return [(await c.post("/v1/chat/completions", json=BODY)).status_code for _ in range(n)]


async def test_trickled_headers_get_a_408_while_others_are_served(gw: RunningGateway) -> None:
    conns = [await open_conn(gw) for _ in range(10)]
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nx-pad: " + b"a" * 200
    trickles = [asyncio.create_task(trickle(w, head)) for _, w in conns]
    watched = asyncio.gather(*(closed_after(r) for r, _ in conns))
    served = await normal_traffic(gw, 20)
    closed = await watched
    assert served == [200] * 20
    for took, data in closed:
        assert took < HEAD_S + 3 and data.startswith(b"HTTP/1.1 408"), (took, data[:80])
    for t in trickles:
        t.cancel()
    for _, w in conns:
        w.close()


async def test_trickled_body_is_cut_off(gw: RunningGateway) -> None:
    reader, writer = await open_conn(gw)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
    writer.write(head)
    task = asyncio.create_task(trickle(writer, b"{" + b" " * 499))
    (took, _), served = await asyncio.gather(closed_after(reader), normal_traffic(gw, 10))
    assert served == [200] * 10
    assert took < BODY_S + 3, took
    task.cancel()
    writer.close()


async def test_a_client_gone_before_its_body_is_recorded_as_gone(gw: RunningGateway) -> None:
    """The head promised a body and none came (the client hung up, or the body deadline passed): the ledger says
    499, client disconnected, not 400 "the body is empty" (a client's request it never finished sending)."""
    rids = ("gone-hangup", "gone-deadline")
    for rid in rids:
        reader, writer = await open_conn(gw)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            b"content-length: 500\r\nx-request-id: " + rid.encode() + b"\r\n\r\n"
        )
        await writer.drain()
        if rid == "gone-hangup":
            await asyncio.sleep(0.2)
            writer.close()
        else:
            await closed_after(reader)  # the server's body deadline
            writer.close()
    ledger = LedgerFile(Path(gw.gateway.settings.ledger.url.removeprefix("sqlite+aiosqlite:///")))
    rows = [await ledger.one_row(rid) for rid in rids]
    assert [(r["status_code"], r["error_type"]) for r in rows] == [(499, "ClientDisconnected")] * 2, rows


async def test_idle_connections_are_closed(gw: RunningGateway) -> None:
    silent = [await open_conn(gw) for _ in range(10)]  # never send a byte
    reader, writer = await open_conn(gw)  # one request, then idle on keep-alive
    writer.write(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
    await writer.drain()
    results = await asyncio.gather(closed_after(reader), *(closed_after(r) for r, _ in silent))
    keepalive_took, data = results[0]
    assert data.startswith(b"HTTP/1.1 200") and keepalive_took < KEEPALIVE_S + 3, (keepalive_took, data[:60])
    for took, _ in results[1:]:
        assert took < HEAD_S + 3, took
    for _, w in [*silent, (reader, writer)]:
        w.close()


async def test_connections_beyond_the_cap_get_a_503(gw: RunningGateway) -> None:
    hogs = [await open_conn(gw) for _ in range(45)]  # more than limit_concurrency (40), all idle
    await asyncio.sleep(0.1)
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=10) as c:
        refused = await c.post("/v1/chat/completions", json=BODY)
        alive = await c.get("/health")  # a liveness probe: a busy pod is not restarted
    assert refused.status_code == 503
    assert alive.status_code == 200
    for _, w in hogs:
        w.close()
    await asyncio.sleep(HEAD_S + 0.5)  # their deadlines passed, or they closed: room again
    assert await normal_traffic(gw, 3) == [200] * 3
