"""The ledger keeps rows while the database is down (bounded), writes them when it returns, and flushes on close."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import select

from gateway.accounting import SqlLedger, open_database
from gateway.accounting.schema import ledger
from gateway.config import LedgerSettings
from gateway.context import RequestContext


class TcpProxy:
    """A TCP relay in front of PostgreSQL that can be cut and restored, on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


def ctx(i: int) -> RequestContext:
    c = RequestContext(request_id=f"req-{i:03d}", endpoint="chat", body={}, requested_model="m")
    c.total_s = 0.01
    return c


async def count_rows(url: str) -> list[str]:
    db = await open_database(url, require=True)
    try:
        async with db.engine.connect() as conn:
            return list((await conn.execute(select(ledger.c.request_id).order_by(ledger.c.id))).scalars())
    finally:
        await db.aclose()


async def test_rows_survive_a_database_outage(pg_url: str) -> None:
    await (await open_database(pg_url, require=True)).aclose()  # create the schema
    proxy = TcpProxy(5432)
    await proxy.start()
    proxied = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    led = SqlLedger(
        await open_database(proxied), LedgerSettings(url=proxied, flush_interval_seconds=0.05, max_pending_rows=30)
    )
    led.start()
    for i in range(5):
        led.record(ctx(i))
    assert await led.flush() and led.written == 5

    await proxy.stop()  # the database becomes unreachable
    for i in range(5, 40):
        led.record(ctx(i))
    assert not await led.flush()
    assert led.pending == 30 and led.dropped == 5  # bounded: the oldest 5 of the outage were dropped
    assert led.write_errors >= 1

    await proxy.start()  # it comes back: the background writer catches up on its own
    for _ in range(200):
        if led.pending == 0:
            break
        await asyncio.sleep(0.05)
    assert led.pending == 0
    await led.aclose()
    await proxy.stop()
    ids = await count_rows(pg_url)
    assert ids == [f"req-{i:03d}" for i in [*range(5), *range(10, 40)]]


async def test_close_flushes_every_pending_row(db_url: str) -> None:
    led = SqlLedger(
        await open_database(db_url), LedgerSettings(url=db_url, flush_interval_seconds=3600, batch_size=1000)
    )
    led.start()
    for i in range(250):
        led.record(ctx(i))
    await asyncio.sleep(0.05)
    assert led.pending == 250  # nothing written yet: the batch is not full and the interval is long
    await led.aclose()
    ids = await count_rows(db_url)
    assert len(ids) == 250 and ids[0] == "req-000" and ids[-1] == "req-249"


async def test_start_with_the_database_down_then_recover(pg_url: str) -> None:
    """The gateway starts even when the database is unreachable; the schema is created once it answers."""
    proxy = TcpProxy(5432)
    await proxy.start()
    port = proxy.port
    await proxy.stop()
    proxied = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")
    db = await open_database(proxied)
    assert not db.migrated
    led = SqlLedger(db, LedgerSettings(url=proxied, flush_interval_seconds=0.05))
    led.start()
    led.record(ctx(1))
    assert not await led.flush()
    await proxy.start()
    for _ in range(200):
        if led.pending == 0:
            break
        await asyncio.sleep(0.05)
    await led.aclose()
    await proxy.stop()
    assert db.migrated
    assert await count_rows(pg_url) == ["req-001"]
