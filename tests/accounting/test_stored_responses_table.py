"""Stored responses in the ledger's database (no Redis): revision 0004's table, per tenant, with a TTL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.accounting.db import Database, open_database
from gateway.accounting.schema import stored_responses
from gateway.config import settings_from_dict
from gateway.frontdoors.sql_store import BATCH_ROWS, SWEEP_EVERY, SqlResponseStore
from gateway.frontdoors.store import StoreUnavailable, build_response_store
from tests.helpers.proxy import silent_server


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """The ledger's database at ``db_url``, migrated, closed afterwards."""
    database = await open_database(db_url, require=True)
    yield database
    await database.aclose()


async def test_put_get_delete_per_tenant(db: Database) -> None:
    store = SqlResponseStore(db, ttl_seconds=60)
    record = {"response": {"id": "resp_1", "output": []}, "messages": [{"role": "user", "content": "é"}]}
    await store.put("key-a", "resp_1", record)
    assert await store.get("key-a", "resp_1") == record
    assert await store.get("key-b", "resp_1") is None  # another tenant sees nothing
    assert not await store.delete("key-b", "resp_1")
    await store.put("key-a", "resp_1", {"replaced": True})  # the same id again: one row, the newest
    assert await store.get("key-a", "resp_1") == {"replaced": True}
    assert await store.delete("key-a", "resp_1")
    assert await store.get("key-a", "resp_1") is None and not await store.delete("key-a", "resp_1")


async def test_ids_the_table_cannot_hold_are_not_found(db: Database) -> None:
    """A client's id with a NUL (PostgreSQL refuses it in text) or longer than the column: not there, rather
    than a database error answered as a 503 outage."""
    store = SqlResponseStore(db, ttl_seconds=60)
    for bad in ("resp_\x00x", "resp_" + "x" * 200):
        assert await store.get("key-a", bad) is None
        assert not await store.delete("key-a", bad)


async def test_expired_rows_are_invisible_then_swept(db: Database) -> None:
    expired = SqlResponseStore(db, ttl_seconds=0)
    await expired.put("t", "old", {"n": 1})
    await asyncio.sleep(0.01)
    assert await expired.get("t", "old") is None and not await expired.delete("t", "old")
    live = SqlResponseStore(db, ttl_seconds=60)
    live._writes = SWEEP_EVERY  # the next write sweeps
    await live.put("t", "new", {"n": 2})
    async with db.engine.connect() as conn:
        ids = (await conn.execute(select(stored_responses.c.response_id))).scalars().all()
        count = (await conn.execute(select(func.count()).select_from(stored_responses))).scalar_one()
    assert list(ids) == ["new"] and count == 1


async def test_the_runtime_picks_the_database_without_redis(db_url: str, db: Database) -> None:
    settings = settings_from_dict(
        {
            "models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}],
            "ledger": {"url": db_url},
        }
    )
    assert isinstance(build_response_store(settings, db), SqlResponseStore)


async def test_concurrent_puts_commit_together(db: Database) -> None:
    """A hundred streams finishing at once: each put returns once its row is committed, and the rows share a
    few transactions instead of queueing for the write lock one by one."""
    commits = 0

    def count(_conn: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(db.engine.sync_engine, "commit", count)
    store = SqlResponseStore(db, ttl_seconds=60)
    n = BATCH_ROWS + 44
    await asyncio.gather(*(store.put("t", f"resp_{i}", {"i": i}) for i in range(n)))
    assert commits <= 3, commits  # two batches (BATCH_ROWS rows at most each), not one per put
    records = await asyncio.gather(*(store.get("t", f"resp_{i}") for i in range(n)))
    assert records == [{"i": i} for i in range(n)]


async def test_a_put_cancelled_with_its_request_is_still_written(db: Database) -> None:
    store = SqlResponseStore(db, ttl_seconds=60)
    task = asyncio.create_task(store.put("t", "resp_gone", {"kept": True}))
    await asyncio.sleep(0)  # queued
    task.cancel()
    await store.aclose()  # waits for the queued write
    assert task.cancelled()
    assert await store.get("t", "resp_gone") == {"kept": True}


async def test_an_unreachable_database_fails_every_waiting_put() -> None:
    db = await open_database("postgresql+asyncpg://postgres@127.0.0.1:9/none")  # nothing listens on port 9
    try:
        store = SqlResponseStore(db, ttl_seconds=60)
        async with asyncio.timeout(30):  # none waits forever
            results = await asyncio.gather(*(store.put("t", f"r{i}", {}) for i in range(20)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        with pytest.raises(StoreUnavailable):  # and the next put tries again
            await store.put("t", "again", {})
    finally:
        await db.aclose()


async def test_a_database_that_stops_answering_costs_seconds_not_minutes() -> None:
    """A database that accepts connections and never answers (a partition): reads and writes give up after the
    store's timeout instead of the driver's (60 s for asyncpg's connect)."""

    async with silent_server() as port:
        # asyncpg's own connect timeout (60 s) left as it is: the store's bound is what gives up
        db = Database(create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/none"))
        try:
            store = SqlResponseStore(db, ttl_seconds=60, timeout_s=0.5)
            async with asyncio.timeout(10):
                results = await asyncio.gather(
                    store.put("t", "r1", {}), store.put("t", "r2", {}), store.get("t", "r0"), return_exceptions=True
                )
            assert all(isinstance(r, StoreUnavailable) for r in results), results
        finally:
            await db.aclose()
