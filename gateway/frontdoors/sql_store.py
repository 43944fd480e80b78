"""Stored responses in the ledger's database: the store when no Redis is configured, shared by every
worker and replica that uses the same database (unlike the in-process store).

``gw_stored_responses`` (Alembic revision ``0005``, declared in :mod:`gateway.accounting.schema`): one row per
stored response, keyed by tenant and id, with its expiry in epoch milliseconds. Expired rows are invisible at
once and deleted in passing (every few hundred writes).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from gateway.accounting.db import Database
from gateway.accounting.schema import stored_responses
from gateway.frontdoors.store import StoreUnavailable

#: Writes between two sweeps of expired rows.
SWEEP_EVERY = 256


class SqlResponseStore:
    """A :class:`~gateway.frontdoors.store.ResponseStore` on the ledger's database (which it does not own)."""

    def __init__(self, db: Database, ttl_seconds: int) -> None:
        self.db = db
        self.ttl = ttl_seconds
        self._writes = 0

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        try:
            await self.db.ensure_schema()
            async with self.db.engine.begin() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"The response store is unavailable: {type(exc).__name__}.") from exc

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        t = stored_responses
        now = _now_ms()
        async with self._connection() as conn:
            await conn.execute(delete(t).where(t.c.tenant == tenant, t.c.response_id == response_id))
            await conn.execute(
                insert(t).values(
                    tenant=tenant,
                    response_id=response_id,
                    expires_ms=now + self.ttl * 1000,
                    record=orjson.dumps(record).decode(),
                )
            )
            self._writes += 1
            if self._writes % SWEEP_EVERY == 1:
                await conn.execute(delete(t).where(t.c.expires_ms <= now))

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        t = stored_responses
        query = select(t.c.record).where(
            t.c.tenant == tenant, t.c.response_id == response_id, t.c.expires_ms > _now_ms()
        )
        async with self._connection() as conn:
            raw = (await conn.execute(query)).scalar_one_or_none()
        if raw is None:
            return None
        record: dict[str, Any] = orjson.loads(raw)
        return record

    async def delete(self, tenant: str, response_id: str) -> bool:
        t = stored_responses
        where = (t.c.tenant == tenant, t.c.response_id == response_id, t.c.expires_ms > _now_ms())
        async with self._connection() as conn:
            result = await conn.execute(delete(t).where(*where))
        return bool(result.rowcount)

    async def aclose(self) -> None:
        """Nothing: the database belongs to the ledger, which closes it."""


def _now_ms() -> int:
    return int(time.time() * 1000)
