"""Retention of the raw ledger rows (``ledger.retention_days``): older rows are deleted in small batches by a
background task, off the request path, and so are the minute rollups of the whole hours before them. The hour
and day rollups are kept, so totals, budgets and savings stay exact; only drill-down (a request's row) and the
ends of a range that old (the minutes of a partial hour) lose their detail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy import delete, select, tuple_
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.schema import DIMENSIONS, GRAINS_MS, KEY_COLUMNS, ledger, rollups

log = logging.getLogger("gateway.accounting")

#: Pause between two delete batches: the database serves the writer and the queries in between.
_PAUSE_S = 0.05


async def delete_expired(engine: AsyncEngine, cutoff_ms: int, batch_rows: int, max_batches: int | None = None) -> int:
    """Delete the raw rows older than ``cutoff_ms`` (epoch ms), ``batch_rows`` per transaction (oldest first,
    through the ``ts_ms`` index); return how many were deleted."""
    oldest = select(ledger.c.id).where(ledger.c.ts_ms < cutoff_ms).order_by(ledger.c.ts_ms).limit(batch_rows)
    stmt = delete(ledger).where(ledger.c.id.in_(oldest.scalar_subquery()))
    deleted = batches = 0
    while max_batches is None or batches < max_batches:
        async with engine.begin() as conn:
            n = (await conn.execute(stmt)).rowcount
        deleted += n
        batches += 1
        if n < batch_rows:
            break
        await asyncio.sleep(_PAUSE_S)
    return deleted


async def delete_expired_minutes(engine: AsyncEngine, cutoff_ms: int, batch_rows: int) -> int:
    """Delete the minute rollup rows of the whole hours before ``cutoff_ms``, ``batch_rows`` per transaction;
    return how many were deleted.

    A range's ends that are not whole hours are read from minute rows, so only the minutes of hours that
    ended before the cutoff go: a lifetime sum (a budget) reads minutes of the current hour only, and the
    hour and day rows of every expired hour stay. Without this the minute table, a row per minute, key and
    value of each dimension, would outgrow the raw rows that retention bounds."""
    hour_ms = GRAINS_MS["hour"]
    before = cutoff_ms // hour_ms * hour_ms
    table = rollups["minute"]
    key = [table.c[name] for name in KEY_COLUMNS]
    deleted = 0
    for dim in DIMENSIONS:  # the primary key starts (dim, bucket_ms): a range scan per dimension
        oldest = select(*key).where(table.c.dim == dim, table.c.bucket_ms < before).limit(batch_rows)
        stmt = delete(table).where(tuple_(*key).in_(oldest))
        while True:
            async with engine.begin() as conn:
                n = (await conn.execute(stmt)).rowcount
            deleted += n
            if n < batch_rows:
                break
            await asyncio.sleep(_PAUSE_S)
    return deleted


class Retention:
    """Deletes expired raw rows every ``interval_s`` in a background task."""

    def __init__(self, engine: AsyncEngine, days: float, interval_s: float, batch_rows: int) -> None:
        self.engine = engine
        self.days = days
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.deleted = 0
        self.deleted_minutes = 0
        self._task: asyncio.Task[None] | None = None

    def cutoff_ms(self, now: float | None = None) -> int:
        """Rows before this time (epoch ms) have expired."""
        return int(((time.time() if now is None else now) - self.days * 86_400) * 1000)

    async def run_once(self, now: float | None = None) -> int:
        """Delete what has expired now; return the rows deleted."""
        cutoff = self.cutoff_ms(now)
        n = await delete_expired(self.engine, cutoff, self.batch_rows)
        self.deleted += n
        minutes = await delete_expired_minutes(self.engine, cutoff, self.batch_rows)
        self.deleted_minutes += minutes
        if n or minutes:
            log.info(
                "ledger retention: deleted %d raw rows and %d minute rollup rows older than %.1f days",
                n,
                minutes,
                self.days,
            )
        return n

    def start(self) -> None:
        """Start the periodic task (inside the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-retention")

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except (SQLAlchemyError, OSError) as exc:  # the database is down: try again next time
                log.warning("ledger retention failed (%s); retrying in %.0f s", exc, self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def aclose(self) -> None:
        """Stop the task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
