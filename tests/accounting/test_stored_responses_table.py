"""Stored responses in the ledger's database (no Redis): revision 0004's table, per tenant, with a TTL."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from gateway.accounting.db import open_database
from gateway.accounting.schema import stored_responses
from gateway.config import settings_from_dict
from gateway.frontdoors.sql_store import SWEEP_EVERY, SqlResponseStore
from gateway.frontdoors.store import build_response_store


async def test_put_get_delete_per_tenant(db_url: str) -> None:
    db = await open_database(db_url, require=True)
    try:
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
    finally:
        await db.aclose()


async def test_expired_rows_are_invisible_then_swept(db_url: str) -> None:
    db = await open_database(db_url, require=True)
    try:
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
    finally:
        await db.aclose()


async def test_the_runtime_picks_the_database_without_redis(db_url: str) -> None:
    db = await open_database(db_url, require=True)
    try:
        settings = settings_from_dict(
            {
                "models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}],
                "ledger": {"url": db_url},
            }
        )
        assert isinstance(build_response_store(settings, db), SqlResponseStore)
    finally:
        await db.aclose()
