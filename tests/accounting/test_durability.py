"""The ledger keeps rows while the database is down (bounded), writes them when it returns, and flushes on close."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from sqlalchemy import event, select

from gateway.accounting import SqlLedger, open_database
from gateway.accounting.ledger import EXECUTE_ROWS, PREPARE_ROWS
from gateway.accounting.raw_insert import RawInsert
from gateway.accounting.rollup import RollupSums
from gateway.accounting.schema import ledger
from gateway.config import LedgerSettings
from gateway.context import RequestContext
from tests.accounting.loop_steps import LoopSteps
from tests.helpers.proxy import TcpProxy, silent_server


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
    proxy.start()
    proxied = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    led = SqlLedger(
        await open_database(proxied), LedgerSettings(url=proxied, flush_interval_seconds=0.05, max_pending_rows=30)
    )
    led.start()
    for i in range(5):
        led.record(ctx(i))
    assert await led.flush() and led.written == 5

    proxy.stop()  # the database becomes unreachable
    for i in range(5, 40):
        led.record(ctx(i))
    assert not await led.flush()
    assert led.pending == 30 and led.dropped == 5  # bounded: the oldest 5 of the outage were dropped
    assert led.write_errors >= 1

    proxy.start()  # it comes back: the background writer catches up on its own
    for _ in range(200):
        if led.pending == 0:
            break
        await asyncio.sleep(0.05)
    assert led.pending == 0
    await led.aclose()
    proxy.close()
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
    proxy = TcpProxy(5432)  # not started: nothing listens on its port yet
    proxied = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    db = await open_database(proxied)
    assert not db.migrated
    led = SqlLedger(db, LedgerSettings(url=proxied, flush_interval_seconds=0.05))
    led.start()
    led.record(ctx(1))
    assert not await led.flush()
    proxy.start()
    for _ in range(200):
        if led.pending == 0:
            break
        await asyncio.sleep(0.05)
    await led.aclose()
    proxy.close()
    assert db.migrated
    assert await count_rows(pg_url) == ["req-001"]


async def test_start_with_a_database_that_does_not_answer() -> None:
    """A partitioned database (it accepts connections and never answers): the start-up gives up on it after
    the connect timeout, not asyncpg's 60 s, and the ledger keeps its rows meanwhile."""

    async with silent_server() as port:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/none"
        started = asyncio.get_running_loop().time()
        db = await open_database(url, connect_timeout_s=0.5)
        assert asyncio.get_running_loop().time() - started < 5 and not db.migrated
        led = SqlLedger(db, LedgerSettings(url=url, flush_interval_seconds=3600, shutdown_flush_seconds=0))
        led.start()
        led.record(ctx(1))
        assert not await led.flush() and led.pending == 1
        await led.aclose()


async def test_a_batch_is_one_transaction_prepared_in_short_steps(db_url: str, monkeypatch: Any) -> None:
    # A batch once went out as one statement whose parameters the event loop prepared at once (about 17 us a row,
    # several milliseconds for a batch) while every request arriving meanwhile waited; then as many short
    # statements, each costing the loop its own overhead. Now: statements of EXECUTE_ROWS rows, their parameters
    # and sums prepared PREPARE_ROWS rows per step of the event loop.
    db = await open_database(db_url)
    led = SqlLedger(db, LedgerSettings(url=db_url, flush_interval_seconds=3600, batch_size=5000))
    led.start()
    led.record(ctx(0))
    assert await led.flush()  # the schema exists: what follows is the batch alone
    statements: list[int] = []
    rollup_statements: list[str] = []
    commits: list[bool] = []

    def on_execute(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        sql = statement.lstrip().upper()
        if sql.startswith("INSERT INTO GW_LEDGER"):
            # SQLite: executemany, a tuple per row; PostgreSQL: one statement, an array per column
            statements.append(len(parameters) if executemany else len(parameters[0]))
        elif found := re.search(r"INSERT INTO (GW_ROLLUP_\w+)", sql):  # after its WITH clause
            rollup_statements.append(found.group(1))

    event.listen(db.engine.sync_engine, "before_cursor_execute", on_execute)
    event.listen(db.engine.sync_engine, "commit", lambda conn: commits.append(True))
    # What the event loop prepares between two turns of a task that runs at every turn (as a request would).
    loop = LoopSteps(monkeypatch)
    loop.count(RawInsert, "statement")
    loop.count(RollupSums, "add")
    n = 2 * EXECUTE_ROWS + PREPARE_ROWS // 2
    async with loop:
        for i in range(1, n + 1):
            led.record(ctx(i))
        assert await led.flush()
    await led.aclose()
    steps = loop.steps
    assert statements == [EXECUTE_ROWS, EXECUTE_ROWS, PREPARE_ROWS // 2]
    assert max(steps) == PREPARE_ROWS  # never more rows at once
    assert sum(steps) == 2 * n  # each row prepared, then summed, once
    # the batch's sums are added to the rollups in the same transaction, per grain one multi-row upsert for the
    # rows with latency histograms (model) and one for the others
    assert rollup_statements == [f"GW_ROLLUP_{g}" for g in ("MINUTE", "HOUR", "DAY") for _ in range(2)]
    assert len(commits) == 1
    assert len(await count_rows(db_url)) == n + 1
