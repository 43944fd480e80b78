"""The writer's own insert: rows stored as SQLAlchemy stores them, a transaction per ``max_batch_rows``, and a batch
holding rows already written (a commit whose reply was lost) written again exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import event, insert, select

from gateway.accounting import SqlLedger, open_database
from gateway.accounting.ledger import PREPARE_ROWS
from gateway.accounting.queries import spend, totals
from gateway.accounting.rollup import RollupSums
from gateway.accounting.schema import ledger
from gateway.config import LedgerSettings
from tests.accounting.loop_steps import LoopSteps
from tests.accounting.rollup_support import as_tuple, random_rows, reference


async def _stored(url: str) -> list[dict[str, Any]]:
    db = await open_database(url, require=True)
    try:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(select(ledger).order_by(ledger.c.id))).mappings().all()
            return [{k: v for k, v in r.items() if k != "id"} for r in rows]
    finally:
        await db.aclose()


async def test_rows_are_stored_as_sqlalchemy_stores_them(db_url: str) -> None:
    rows = random_rows(7, 20, span_ms=600_000, models=("model-0", "model-1"))
    rows[3]["cost_usd"] = Decimal("0.0000012345678915")  # more places than stored: rounded as the Money type does
    rows[4]["cascade"], rows[4]["cascade_attempts"] = "accepted", '[{"model":"m"}]'
    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url))
    for row in rows:
        led.append(dict(row))
    assert await led.flush()
    written = await _stored(db_url)
    async with db.engine.begin() as conn:  # the same rows through SQLAlchemy's insert
        await conn.execute(ledger.delete())
        await conn.execute(insert(ledger), [dict(r) for r in rows])
    await led.aclose()
    assert written == await _stored(db_url)
    assert written[3]["cost_usd"] == Decimal("0.000001234568")


async def test_a_transaction_takes_up_to_max_batch_rows(db_url: str) -> None:
    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url, flush_interval_seconds=3600, batch_size=50, max_batch_rows=100))
    commits: list[bool] = []
    event.listen(db.engine.sync_engine, "commit", lambda conn: commits.append(True))
    for row in random_rows(1, 250, span_ms=600_000, models=("model-0", "model-1")):
        led.append(row)
    assert await led.flush()
    await led.aclose()
    assert len(commits) == 3 and len(await _stored(db_url)) == 250


async def test_a_batch_with_rows_already_written_adds_each_row_once(db_url: str, monkeypatch: Any) -> None:
    rows = random_rows(3, 1_200, span_ms=600_000, models=("model-0", "model-1"))
    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url, flush_interval_seconds=3600))
    for row in rows[:120]:
        led.append(dict(row))
    assert await led.flush()
    # retried after a lost commit reply: rows 100-119 are already there, in the middle of the batch's first step;
    # the 1,100 rows go out as more than one statement, each prepared in several steps
    loop = LoopSteps(monkeypatch)
    loop.count(RollupSums, "add")
    async with loop:
        for row in rows[100:]:
            led.append(dict(row))
        assert await led.flush()
    # the rows it wrote are summed in short steps too (once a whole statement's 500 at once)
    assert max(loop.steps) == PREPARE_ROWS
    assert [r["row_key"] for r in await _stored(db_url)] == [r["row_key"] for r in rows]
    for group_by in ("model", "user", "key"):
        got = {r.group: as_tuple(r) for r in await spend(db.engine, group_by)}
        assert got == reference(rows, group_by, None, None)
    assert as_tuple(await totals(db.engine))[0] == 1_200
    await led.aclose()
