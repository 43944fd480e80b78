"""The writer's own insert: rows stored as SQLAlchemy stores them, a transaction per ``max_batch_rows``, and a batch
holding rows already written (a commit whose reply was lost) written again exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import event, insert, select

from gateway.accounting import SqlLedger, open_database
from gateway.accounting.ledger import PREPARE_ROWS, row_from_context
from gateway.accounting.quality_tables import feedback
from gateway.accounting.queries import spend, totals
from gateway.accounting.rollup import RollupSums
from gateway.accounting.schema import ledger
from gateway.config import LedgerSettings
from gateway.context import RequestContext
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


async def test_a_row_the_database_refuses_does_not_hold_back_the_others(db_url: str) -> None:
    """PostgreSQL refuses a NUL in text, which a client can put in ``model`` or ``user``: the writer stores it as
    U+FFFD. A row the database still refuses (here a count beyond its INTEGER column) is dropped alone and counted:
    before, its batch failed on every retry and no request was recorded again until the queue overflowed."""
    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url, flush_interval_seconds=3600))
    ctx = RequestContext(request_id="nul", endpoint="chat", body={}, requested_model="no-such-model\x00")
    ctx.user, ctx.status_code = "evil\x00user", 404
    led.record(ctx)
    too_long = row_from_context(RequestContext(request_id="long", endpoint="chat", body={}, requested_model="m"))
    too_long["prompt_tokens"] = 2**40
    led.append(too_long)
    led.record(RequestContext(request_id="after", endpoint="chat", body={}, requested_model="m"))
    assert await led.flush()
    await led.aclose()
    stored = {r["request_id"]: r for r in await _stored(db_url)}
    assert stored["nul"]["requested_model"] == "no-such-model\ufffd" and stored["nul"]["user"] == "evil\ufffduser"
    assert "after" in stored
    if db_url.startswith("postgresql"):
        assert "long" not in stored and led.dropped == 1
    else:  # SQLite's INTEGER takes 64 bits
        assert "long" in stored and led.dropped == 0


async def test_a_value_no_driver_can_convert_is_dropped_and_the_writer_goes_on(db_url: str) -> None:
    """SQLite's driver raises a bare ``OverflowError`` for an int past 64 bits: it killed the writer's task (every
    later request unrecorded, the queue lost at shutdown). Such a row is now dropped alone, like one the database
    refuses; and an absurd token count from an upstream is stored at the column's maximum, not lost."""
    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url, flush_interval_seconds=3600))
    huge = row_from_context(RequestContext(request_id="huge", endpoint="chat", body={}, requested_model="m"))
    huge["completion_tokens"] = 2**70
    led.append(huge)
    absurd = RequestContext(request_id="absurd", endpoint="chat", body={}, requested_model="m")
    absurd.usage.completion_tokens = 2**40
    led.record(absurd)
    led.record(RequestContext(request_id="after", endpoint="chat", body={}, requested_model="m"))
    assert await led.flush()
    await led.aclose()
    stored = {r["request_id"]: r for r in await _stored(db_url)}
    assert "huge" not in stored and led.dropped == 1
    assert stored["absurd"]["completion_tokens"] == 2**31 - 1 and "after" in stored


async def test_the_quality_tables_store_a_nul_as_a_replacement_character(db_url: str) -> None:
    """A sampled prompt or a feedback comment with a NUL (PostgreSQL refuses it in text) is stored, not lost."""
    db = await open_database(db_url, require=True)
    await db.ensure_schema()
    try:
        async with db.engine.begin() as conn:
            await conn.execute(
                feedback.insert(), [{"ts_ms": 1, "request_id": "r\x00", "score": 1.0, "comment": "bad\x00answer"}]
            )
            row = (await conn.execute(select(feedback.c.request_id, feedback.c.comment))).one()
            found = (await conn.execute(select(feedback.c.id).where(feedback.c.request_id == "r\x00"))).all()
    finally:
        await db.aclose()
    assert tuple(row) == ("r\ufffd", "bad\ufffdanswer")
    assert len(found) == 1  # looked up the way it was stored
