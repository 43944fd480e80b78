"""Stored responses in the ledger's database: the store when no Redis is configured, shared by every
worker and replica that uses the same database (unlike the in-process store).

``gw_stored_responses`` (Alembic revision ``0005``, declared in :mod:`gateway.accounting.schema`): one row per
stored response, keyed by tenant and id, with its expiry in epoch milliseconds. Expired rows are invisible at
once and deleted in passing (every few hundred writes).

Writes are committed in groups: a put joins the batch that the store's one writer task commits next, and
returns once that batch is committed (so the client that saw the response finish can continue from it at
once). With a hundred streams finishing together, one transaction per response queued behind the database's
write lock (SQLite's busy handler sleeps up to 100 ms at a time) for up to seconds; one per batch does not.

After a failure the store is left alone for ``retry_after_s`` (:class:`~gateway.frontdoors.store.StoreBreaker`):
a database that stopped answering costs one timeout, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import delete, insert, select, tuple_
from sqlalchemy.exc import SQLAlchemyError

from gateway.accounting.db import Database
from gateway.accounting.schema import stored_responses
from gateway.frontdoors.store import RETRY_AFTER_S, StoreBreaker, StoreUnavailable

if TYPE_CHECKING:
    from gateway.metrics import Metrics

#: Writes between two sweeps of expired rows.
SWEEP_EVERY = 256
#: Most rows committed in one transaction (four bound parameters each, and two for the delete).
BATCH_ROWS = 256
#: The longest one read, delete or batch of writes may take (the Redis store's socket timeout): a database that
#: stopped answering costs a stored response or a 503, not a stream held open for the driver's connect timeout.
TIMEOUT_S = 2.0


@dataclass(slots=True)
class _Put:
    tenant: str
    response_id: str
    expires_ms: int
    record: str
    committed: asyncio.Future[None]


_ID_CHARS = 64  # gw_stored_responses.response_id is a String(64)


def _could_be_stored(response_id: str) -> bool:
    """Whether the table could hold this id: a client's id with a NUL (which PostgreSQL refuses in text) or
    longer than the column is simply not there, rather than a database error answered as an outage."""
    return len(response_id) <= _ID_CHARS and "\x00" not in response_id


class SqlResponseStore:
    """A :class:`~gateway.frontdoors.store.ResponseStore` on the ledger's database (which it does not own)."""

    def __init__(
        self,
        db: Database,
        ttl_seconds: int,
        *,
        timeout_s: float = TIMEOUT_S,
        retry_after_s: float = RETRY_AFTER_S,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.ttl = ttl_seconds
        self.timeout_s = timeout_s
        self.breaker = StoreBreaker("database", retry_after_s, metrics)
        self._writes = 0
        self._queue: list[_Put] = []
        self._writer: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.db.ensure_schema()
                async with self.db.engine.begin() as conn:
                    yield conn
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"The response store is unavailable: {type(exc).__name__}.") from exc

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        with self.breaker.call():
            committed = asyncio.get_running_loop().create_future()
            row = orjson.dumps(record).decode()
            self._queue.append(_Put(tenant, response_id, _now_ms() + self.ttl * 1000, row, committed))
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._write_queued(), name="response-store-writer")
            await committed

    async def _write_queued(self) -> None:
        batch: list[_Put] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[:BATCH_ROWS], self._queue[BATCH_ROWS:]
                try:
                    await self._write(batch)
                except StoreUnavailable as exc:
                    _settle(batch, exc.message)
                else:
                    _settle(batch, None)
        finally:  # cancelled, or a bug: no request may wait for a write that will never come
            queued, self._queue = self._queue, []
            _settle(batch + queued, "The response store's writer stopped.")

    async def _write(self, batch: list[_Put]) -> None:
        t = stored_responses
        rows = {(put.tenant, put.response_id): put for put in batch}  # an id put twice: the later record
        before, self._writes = self._writes, self._writes + len(rows)
        async with self._connection() as conn:
            await conn.execute(delete(t).where(tuple_(t.c.tenant, t.c.response_id).in_(list(rows))))
            await conn.execute(
                insert(t),
                [
                    {"tenant": p.tenant, "response_id": p.response_id, "expires_ms": p.expires_ms, "record": p.record}
                    for p in rows.values()
                ],
            )
            if (self._writes - 1) // SWEEP_EVERY != (before - 1) // SWEEP_EVERY:  # the 1st, 257th, ... write
                await conn.execute(delete(t).where(t.c.expires_ms <= _now_ms()))

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        if not _could_be_stored(response_id):
            return None
        t = stored_responses
        query = select(t.c.record).where(
            t.c.tenant == tenant, t.c.response_id == response_id, t.c.expires_ms > _now_ms()
        )
        with self.breaker.call():
            async with self._connection() as conn:
                raw = (await conn.execute(query)).scalar_one_or_none()
        if raw is None:
            return None
        record: dict[str, Any] = orjson.loads(raw)
        return record

    async def delete(self, tenant: str, response_id: str) -> bool:
        if not _could_be_stored(response_id):
            return False
        t = stored_responses
        where = (t.c.tenant == tenant, t.c.response_id == response_id, t.c.expires_ms > _now_ms())
        with self.breaker.call():
            async with self._connection() as conn:
                result = await conn.execute(delete(t).where(*where))
        return bool(result.rowcount)

    async def aclose(self) -> None:
        """Let queued writes finish (the database belongs to the ledger, which closes it)."""
        if self._writer is not None:
            await self._writer


def _settle(puts: list[_Put], error: str | None) -> None:
    """Tell each waiting put that its batch committed (``error`` None) or failed."""
    for put in puts:
        if put.committed.done():  # settled already, or cancelled with its request (the row is written anyway)
            continue
        if error is None:
            put.committed.set_result(None)
        else:
            put.committed.set_exception(StoreUnavailable(error))


def _now_ms() -> int:
    return int(time.time() * 1000)
