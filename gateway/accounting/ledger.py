"""The batching ledger: one row per request, written off the request's hot path.

``record`` only turns the request's context into a row and appends it to an in-memory queue; a
background task writes the queue at least every ``ledger.flush_interval_seconds`` (sooner once
``ledger.batch_size`` rows wait), each transaction taking every queued row up to ``ledger.max_batch_rows``. The
same transaction adds the rows it wrote to the rollups (:mod:`gateway.accounting.rollup`): a rollup row per
grain, bucket, key and value, however many raw rows it sums, so a writer that falls behind writes larger
transactions and catches up (the rollup upserts are shared by more rows).

Durability, stated plainly:

* **Database unreachable**: rows stay queued (at most ``ledger.max_pending_rows``; beyond that the
  oldest are dropped and counted in ``gateway_ledger_dropped_rows_total``) and the writer retries with
  backoff (0.5 s doubling to 5 s); they are written, in order, when the database answers again.
* **Graceful shutdown** (SIGTERM, lifespan end): :meth:`SqlLedger.aclose` writes every pending row,
  retrying for up to ``ledger.shutdown_flush_seconds`` if the database is down.
* **Crash** (SIGKILL, OOM, power loss): the rows still queued are lost, i.e. the requests of the last
  ``flush_interval_seconds`` (0.5 s by default), plus whatever accumulated while the database was
  unreachable. Budget counters in Redis are charged at request end, independently of the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.accounting.db import Database
from gateway.accounting.raw_insert import RawInsert, Statement
from gateway.accounting.retention import Retention
from gateway.accounting.rollup import RollupSums, unnest_upsert_sql, upsert_sql
from gateway.accounting.schema import GRAINS_MS, LATENCY_BOUNDS_MS, MONEY_PLACES, clean_text, rollups
from gateway.config import LedgerSettings
from gateway.context import AttemptCost, RequestContext
from gateway.hooks import LogRecorder

log = logging.getLogger("gateway.accounting")

Row = dict[str, Any]
#: Rows per statement within a transaction. Each statement costs the event loop about 0.4 ms whatever its size
#: (SQLAlchemy's execution, the hand-off to the driver's thread): fewer, larger statements leave the loop more
#: time for requests (bench/RESULTS.md, "Larger statements, prepared in short steps").
EXECUTE_ROWS = 500
#: Rows whose parameters, then sums, the event loop prepares in one step before it lets waiting requests run
#: (about 0.3 ms each on this project's VM): bounds how long a request waits for the ledger.
PREPARE_ROWS = 100


GRAINS_MS_SEQ = tuple(GRAINS_MS.values())


def _decimal_usd(units: int) -> Decimal:
    """Integer 1e-12 USD (how SQLite stores money, and the rollups' sums are added up) as USD."""
    return Decimal(units).scaleb(-MONEY_PLACES)


def _written(rows: list[Row], keys: set[str | None]) -> Iterator[Row]:
    """The ``rows`` that the insert wrote, given the ``row_key`` values it returned (a row without a key always is;
    of two rows with the same key, the first)."""
    for row in rows:
        key = row.get("row_key")
        if key is None:
            yield row
        elif key in keys:
            keys.discard(key)
            yield row


def _refused(exc: SQLAlchemyError) -> bool:
    """The database refused the values (a data or integrity error: SQLSTATE class 22 or 23), rather than failed to
    answer: the same rows would be refused again."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(state, str) and state[:2] in ("22", "23")


#: What a driver raises, unwrapped, for a value it cannot convert (sqlite3: an int past 64 bits is an
#: ``OverflowError``): refused values, like the database's own data errors, never a reason to stop writing.
_UNSTORABLE = (OverflowError, ValueError, TypeError)


class _AlreadyWritten(Exception):
    """The batch holds rows already in the table: write it again with :meth:`SqlLedger._transaction`'s ``exact``."""


def _cut(value: str | None, n: int) -> str | None:
    """``value`` to fit a column of ``n`` characters, its NULs replaced (PostgreSQL refuses them in text; the
    writer's raw insert skips the columns' :class:`~gateway.accounting.schema.CleanString` processing)."""
    return None if value is None else clean_text(value[:n])


#: The token columns are 32-bit integers; a count past that (an upstream's absurd ``usage``) is stored as this.
_TOKENS_MAX = 2**31 - 1


def row_from_context(ctx: RequestContext) -> Row:
    """The ledger row of one finished request (its money as Decimal)."""
    ts = datetime.fromtimestamp(ctx.started_wall, UTC)
    return {
        "ts": ts,
        "ts_ms": int(ctx.started_wall * 1000),
        "day": ts.strftime("%Y-%m-%d"),
        "request_id": _cut(ctx.request_id, 128),
        "key_id": _cut(ctx.key_id, 64),
        "user": _cut(ctx.user, 256),
        "team": _cut(ctx.team, 128),
        "endpoint": ctx.api or ctx.endpoint,
        "route": _cut(ctx.route, 128),
        "policy": _cut(ctx.policy, 64),
        "requested_model": _cut(ctx.requested_model, 256),
        "chosen_model": _cut(ctx.chosen_model, 256),
        "stream": ctx.stream,
        "prompt_tokens": min(ctx.usage.prompt_tokens, _TOKENS_MAX),
        "completion_tokens": min(ctx.usage.completion_tokens, _TOKENS_MAX),
        "tokens_estimated": ctx.usage.estimated,
        "cost_usd": ctx.cost_usd,
        "baseline_cost_usd": ctx.baseline_cost_usd,
        "saved_usd": ctx.saved_usd,
        "cache_status": ctx.cache_status[:16],
        "ttft_ms": None if ctx.ttft_s is None else round(ctx.ttft_s * 1000, 3),
        "total_ms": None if ctx.total_s is None else round(ctx.total_s * 1000, 3),
        "status_code": ctx.status_code,
        "error_type": _cut(ctx.error_type, 64),
        "attempts": len(ctx.attempts),
        "row_key": uuid.uuid4().hex,
        "cascade": ctx.cascade,
        "cascade_attempts": _cascade_attempts(ctx),
        "routed_cost_usd": ctx.routed_cost_usd,
    }


def _cascade_attempts(ctx: RequestContext) -> str | None:
    """A request's paid attempts as JSON: each escalated, judging or timed-out call, then the one served (None for
    a request that made no call beside its answer and is not on a cascade route)."""
    if ctx.cascade is None and not ctx.cascade_attempts:
        return None
    paid = [a.to_json() for a in ctx.cascade_attempts]
    if ctx.chosen_model is not None:
        final = ctx.cost_usd - sum((a.cost_usd for a in ctx.cascade_attempts), Decimal(0))
        u = ctx.usage
        outcome = "accepted" if ctx.cascade == "accepted" else "answered"
        paid.append(AttemptCost(ctx.chosen_model, u.prompt_tokens, u.completion_tokens, final, outcome).to_json())
    return json.dumps(paid, separators=(",", ":"))


class SqlLedger:
    """A :class:`~gateway.hooks.Recorder` that batches rows into the ledger table."""

    def __init__(self, db: Database, settings: LedgerSettings) -> None:
        self.db = db
        self.settings = settings
        self.written = 0
        self.dropped = 0
        self._writing = 0  # rows of the batch being written (out of the queue until it ends)
        self.write_errors = 0
        self._pending: deque[Row] = deque()
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._last_drop_log = 0.0
        self._log = LogRecorder()
        self._inserts: dict[str, RawInsert] = {}
        self._rollup_stmts: dict[str, list[tuple[str, str]]] = {}
        self.retention: Retention | None = None
        if settings.retention_days is not None:
            self.retention = Retention(
                db.engine, settings.retention_days, settings.retention_interval_seconds, settings.retention_batch_rows
            )

    # -- recording (hot path) ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows not yet written (queued, or in a write not finished)."""
        return len(self._pending) + self._writing

    def record(self, ctx: RequestContext) -> None:
        """Queue the row for ``ctx`` and write its request log line; never blocks, never raises."""
        self._log.record(ctx)
        self.append(row_from_context(ctx))

    def append(self, row: Row) -> None:
        """Queue one prepared row (dropping the oldest beyond ``max_pending_rows``)."""
        self._pending.append(row)
        self._trim()
        if len(self._pending) >= self.settings.batch_size:
            self._wake.set()

    def _trim(self) -> None:
        excess = len(self._pending) - self.settings.max_pending_rows
        if excess <= 0:
            return
        for _ in range(excess):
            self._pending.popleft()
        self.dropped += excess
        now = time.monotonic()
        if now - self._last_drop_log > 10:
            self._last_drop_log = now
            log.error(
                "ledger queue full (%d rows): dropped %d rows so far", self.settings.max_pending_rows, self.dropped
            )

    # -- writing ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background writer (inside the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")
        if self.retention is not None:
            self.retention.start()

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer`` at :meth:`aclose`, before the database is closed (e.g. the key admission)."""
        self._closers.append(closer)

    async def _run(self) -> None:
        backoff = 0.0
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff or self.settings.flush_interval_seconds)
            self._wake.clear()
            if self._closing:
                return
            ok = await self.flush()
            backoff = 0.0 if ok else min(max(backoff * 2, 0.5), 5.0)

    async def flush(self) -> bool:
        """Write every pending row now; False if the database failed (the rows stay queued)."""
        async with self._write_lock:
            while self._pending:
                if not await self._write_batch():
                    return False
            return True

    async def _write_batch(self) -> bool:
        n = min(len(self._pending), self.settings.max_batch_rows)
        batch = [self._pending.popleft() for _ in range(n)]
        self._writing = n
        done = False
        try:
            await self.db.ensure_schema()
            try:
                await self._write(batch)
            except _UNSTORABLE:
                await self._write_alone(batch)
            except SQLAlchemyError as exc:
                if not _refused(exc):
                    raise
                await self._write_alone(batch)
            done = True
        except (SQLAlchemyError, OSError) as exc:
            self.write_errors += 1
            log.warning("ledger write of %d rows failed (%s); %d rows pending", n, exc, len(self._pending) + n)
        finally:
            self._writing = 0
            if done:
                self.written += n
            else:  # also on cancellation: the rows go back, in order, at the front
                self._pending.extendleft(reversed(batch))
                self._trim()
        return done

    async def _write(self, batch: list[Row]) -> None:
        try:
            await self._transaction(batch, exact=False)
        except _AlreadyWritten:  # rolled back: written again, skipping (and not summing) the rows already there
            await self._transaction(batch, exact=True)

    async def _write_alone(self, batch: list[Row]) -> None:
        """Each row of ``batch`` in a transaction of its own, after the database refused the batch's values: the
        rows it refuses alone are dropped (counted and logged), since retrying them could never succeed and would
        hold back every row queued after them. A row written here and queued again (the database went away
        meanwhile) is skipped by its ``row_key`` next time."""
        for row in batch:
            try:
                await self._write([row])
            except (SQLAlchemyError, *_UNSTORABLE) as exc:
                if isinstance(exc, SQLAlchemyError) and not _refused(exc):
                    raise
                self.dropped += 1
                log.error("ledger row of request %s refused by the database, dropped: %s", row.get("request_id"), exc)

    async def _transaction(self, batch: list[Row], exact: bool) -> None:
        """Insert ``batch`` and add it to the rollups, in one transaction.

        A row can already be in the table: a commit can succeed on the server while its reply is lost with the
        connection, and the batch is then written again (each row carries its own ``row_key``; the insert skips
        the rows whose key is there). Not ``exact``, the insert returns only how many rows it wrote, and if that is
        fewer than it sent, :class:`_AlreadyWritten` rolls the transaction back; ``exact``, it returns the key of
        every row it wrote, and only those are summed.
        """
        priority = self.db.writer_priority
        async with self.db.engine.connect() as conn:
            # Idle CPU priority for the SQLite thread while that starves nothing (gateway.accounting.priority).
            priority.begin(conn.info)
            try:
                await self._statements(conn, batch, exact)
                with priority.watch(self._behind):
                    await conn.commit()
            finally:  # on an error, closing the connection rolls the transaction back
                priority.end()

    @property
    def _behind(self) -> bool:
        """Rows are piling up: the writer's statements run at normal CPU priority (gateway.accounting.priority)."""
        return len(self._pending) >= 2 * self.settings.batch_size

    async def _execute(self, conn: AsyncConnection, sql: str, params: Any) -> CursorResult[Any]:
        with self.db.writer_priority.watch(self._behind):
            return await conn.exec_driver_sql(sql, params)

    async def _statements(self, conn: AsyncConnection, batch: list[Row], exact: bool) -> None:
        """:meth:`_transaction`'s statements, on ``conn``."""
        insert = self._insert(conn.dialect)
        sums = RollupSums(GRAINS_MS_SEQ, LATENCY_BOUNDS_MS)
        # A request arriving while the event loop prepares rows waits for it: a statement's parameters, then its
        # sums, are prepared PREPARE_ROWS rows at a time, letting requests run in between.
        for start in range(0, len(batch), EXECUTE_ROWS):
            rows = batch[start : start + EXECUTE_ROWS]
            stmt = await self._prepare(insert, rows, exact)
            if exact:
                result = await self._execute(conn, stmt.sql, stmt.params)
                await self._sum(sums, list(_written(rows, set(result.scalars()))))
                continue
            # Summed while the database inserts them (if some were there already, the sums are thrown away).
            running = asyncio.ensure_future(self._execute(conn, stmt.sql, stmt.params))
            try:
                await self._sum(sums, rows, stmt.units)  # its first step lets the statement go out
            finally:  # the connection is free again before anything else (a rollback) uses it
                result = await running
            if result.rowcount != len(rows):
                raise _AlreadyWritten
        # Per grain one upsert for the model rows (with histograms) and one for the others, each carrying one row
        # per bucket, key and value: shared by every row of the transaction.
        if len(sums):
            money = None if conn.dialect.name == "sqlite" else _decimal_usd
            pg = conn.dialect.name == "postgresql"
            for sqls, grain_rows in zip(self._rollups(conn.dialect), sums.grains(money), strict=True):
                for sql, params in zip(sqls, grain_rows, strict=True):
                    if params and pg:  # one statement, an array per column
                        await self._execute(conn, sql, tuple(list(col) for col in zip(*params, strict=True)))
                    elif params:
                        await self._execute(conn, sql, params)

    @staticmethod
    async def _sum(sums: RollupSums, rows: list[Row], units: list[tuple[int, int, int]] | None = None) -> None:
        """Add ``rows`` to ``sums``, :data:`PREPARE_ROWS` rows per event-loop step, each after a turn of the loop."""
        for at in range(0, len(rows), PREPARE_ROWS):
            await asyncio.sleep(0)
            sums.add(rows[at : at + PREPARE_ROWS], None if units is None else units[at : at + PREPARE_ROWS])

    @staticmethod
    async def _prepare(insert: RawInsert, rows: list[Row], returning: bool) -> Statement:
        """The statement inserting ``rows``, its parameters prepared :data:`PREPARE_ROWS` rows per event-loop step."""
        parts = []
        for at in range(0, len(rows), PREPARE_ROWS):
            # a turn first, even for the first rows: when the statement before this one was done already, awaiting
            # it did not yield, and its last sums and these rows were prepared in one step (150 rows seen)
            await asyncio.sleep(0)
            parts.append(insert.statement(rows[at : at + PREPARE_ROWS], returning))
        return insert.joined(parts)

    def _insert(self, dialect: Dialect) -> RawInsert:
        """The batch insert, skipping rows already written: a commit can succeed on the server while the reply is
        lost with the connection, and the batch is then retried (each row carries its own ``row_key``)."""
        insert = self._inserts.get(dialect.name)
        if insert is None:
            insert = self._inserts[dialect.name] = RawInsert(dialect)
        return insert

    def _rollups(self, dialect: Dialect) -> list[tuple[str, str]]:
        """The statements adding a batch's sums to the minute, hour and day rollups (in that order): the rows with
        histograms, then the others."""
        stmts = self._rollup_stmts.get(dialect.name)
        if stmts is None:
            if dialect.name == "postgresql":
                stmts = [(unnest_upsert_sql(rollups[g], True), unnest_upsert_sql(rollups[g], False)) for g in GRAINS_MS]
            else:
                stmts = [
                    (upsert_sql(rollups[g], dialect, True), upsert_sql(rollups[g], dialect, False)) for g in GRAINS_MS
                ]
            self._rollup_stmts[dialect.name] = stmts
        return stmts

    async def aclose(self) -> None:
        """Stop the writer and write every pending row, retrying for ``shutdown_flush_seconds``.

        A write that makes no progress for that long (at least 5 s) is given up, its rows reported unwritten: a
        database behind a partition holds a connection open without ever answering, and a shutdown must end.
        """
        self._closing = True
        self._wake.set()
        if self.retention is not None:
            await self.retention.aclose()
        window = self.settings.shutdown_flush_seconds
        stall = max(window, _STALL_S)
        if self._task is not None:
            await self._unless_stalled(self._task, stall)
            self._task = None
        for closer in self._closers:
            await closer()
        deadline = time.monotonic() + window
        delay = 0.25
        while self._pending:
            left = deadline - time.monotonic()
            if await self._unless_stalled(asyncio.ensure_future(self.flush()), max(left, _STALL_S)) or left <= 0:
                break
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 2.0)
        if self.pending:  # a write given up may still hold its batch
            log.error("ledger closed with %d rows unwritten (database unreachable)", self.pending)
        try:
            async with asyncio.timeout(_CLOSE_S):
                await self.db.aclose()
        except TimeoutError:
            log.warning("ledger database connections not closed in %.0f s (the database does not answer)", _CLOSE_S)

    async def _unless_stalled(self, task: asyncio.Future[Any], window: float) -> Any:
        """``task``'s result, or None once ``window`` seconds pass without a row written (``task`` cancelled: a
        batch in flight goes back to the queue)."""
        while True:
            written = self.written
            done, _ = await asyncio.wait({task}, timeout=max(window, 0.0))
            if done:
                if task.cancelled():
                    return None
                if task.exception() is not None:
                    log.error("ledger write failed at shutdown: %r", task.exception())
                    return None
                return task.result()
            if self.written == written:
                task.cancel()
                await asyncio.wait({task}, timeout=_CLOSE_S)
                return None

    # -- metrics --------------------------------------------------------------------------------------

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export the writer's counters on ``registry``."""
        registry.register(_LedgerCollector(self))


#: How long a shutdown waits for a cancelled write to end, and for the database's connections to close.
_CLOSE_S = 2.0
#: The least time a shutdown's write may go without writing a row before it is given up.
_STALL_S = 5.0


class _LedgerCollector(Collector):
    def __init__(self, ledger_: SqlLedger) -> None:
        self._ledger = ledger_

    def collect(self) -> Iterator[Metric]:
        led = self._ledger
        yield GaugeMetricFamily("gateway_ledger_pending_rows", "Ledger rows not yet written", value=led.pending)
        yield CounterMetricFamily("gateway_ledger_written_rows", "Ledger rows written", value=led.written)
        yield CounterMetricFamily(
            "gateway_ledger_dropped_rows", "Ledger rows dropped because the queue was full", value=led.dropped
        )
        yield CounterMetricFamily("gateway_ledger_write_errors", "Failed ledger batch writes", value=led.write_errors)
        yield CounterMetricFamily(
            "gateway_ledger_writer_raised",
            "Ledger statements raised from idle to normal CPU priority because they waited too long for it",
            value=led.db.writer_priority.raised,
        )
        if led.retention is not None:
            yield CounterMetricFamily(
                "gateway_ledger_expired_rows", "Raw ledger rows deleted by retention", value=led.retention.deleted
            )
            yield CounterMetricFamily(
                "gateway_ledger_expired_minute_rollups",
                "Minute rollup rows of whole expired hours deleted by retention",
                value=led.retention.deleted_minutes,
            )
