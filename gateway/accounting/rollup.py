"""Rollups: the ledger's sums per time bucket (minute, hour, day), key, dimension and value.

Each rollup row adds up the raw rows of one bucket for one ``(key_id, dim, value)``: ``dim`` is ``total``
(value ``''``), ``model`` (the chosen model), ``route``, ``team`` or ``user``; a NULL key or value is stored as
``''`` (unique keys must not hold NULL). The sums are computed by the database from the raw rows themselves,
in the same transaction that inserts them, and only from the rows that insert really wrote (``RETURNING``
after ``ON CONFLICT DO NOTHING``): a retried batch adds nothing twice, and money stays exact (the same
``NUMERIC`` / integer-units arithmetic as a ``SUM`` over the raw rows).

Latency histograms (counts per bucket of :data:`~gateway.accounting.schema.LATENCY_BOUNDS_MS`, mergeable by
addition) are kept on the ``model`` rows only.

Two writers adding to the same bucket serialise on the rollup row (``ON CONFLICT DO UPDATE`` adds to it);
both insert in key order, so they take the row locks in the same order.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    null,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from gateway.accounting.schema import (
    DIMENSIONS,
    GRAINS_MS,
    KEY_COLUMNS,
    ledger,
)

#: The gateway's SQLite page cache per connection (negative: KiB), as :mod:`gateway.accounting.db` sets it.
_SQLITE_CACHE_KIB = -32768
_HIT = ledger.c.cache_status.in_(("hit", "semantic-hit"))
#: Rows whose latency is summarised: answered by a model, successful, not from the cache.
_TIMED = and_(ledger.c.chosen_model.is_not(None), ledger.c.status_code < 400, ~_HIT)


def _hist(column: ColumnElement[Any], bounds: Sequence[float]) -> list[ColumnElement[Any]]:
    """Counts per latency bucket of ``column`` (NULL for the rows that are not timed: not counted)."""
    out: list[ColumnElement[Any]] = []
    edges: list[float | None] = [None, *bounds, None]
    for lo, hi in itertools.pairwise(edges):
        cond = []
        if lo is not None:
            cond.append(column >= lo)
        if hi is not None:
            cond.append(column < hi)
        out.append(func.count(case((and_(*cond), 1))))
    return out


def rollup_select(
    grain_ms: int, bounds: Sequence[float], where: ColumnElement[bool], hist_every_dim: bool = False
) -> Select[Any]:
    """The rollup rows (in key order) that the ledger rows matching ``where`` add up to, at ``grain_ms``.

    Columns: the key (dim, bucket_ms, key_id, value), the counts, the money, the total-time histogram, the
    time-to-first-token histogram (``len(bounds) + 1`` buckets each; NULL but on the model rows, unless
    ``hist_every_dim``: how revision 0002 filled them). The matching rows are read once (a CTE), then
    grouped once per dimension.
    """
    grain: ColumnElement[int] = literal_column(str(int(grain_ms)), BigInteger())  # inlined: one GROUP BY expr
    src = (
        select(
            ((ledger.c.ts_ms // grain) * grain).label("bucket_ms"),
            func.coalesce(ledger.c.key_id, "").label("key_id"),
            func.coalesce(ledger.c.chosen_model, "").label("model"),
            func.coalesce(ledger.c.route, "").label("route"),
            func.coalesce(ledger.c.team, "").label("team"),
            func.coalesce(ledger.c.user, "").label("user"),
            ledger.c.prompt_tokens,
            ledger.c.completion_tokens,
            case((_HIT, 1), else_=0).label("hit"),
            case((ledger.c.status_code >= 400, 1), else_=0).label("err"),
            ledger.c.cost_usd,
            ledger.c.baseline_cost_usd,
            ledger.c.saved_usd,
            case((_TIMED, ledger.c.total_ms)).label("timed_total"),
            case((_TIMED, ledger.c.ttft_ms)).label("timed_ttft"),
        )
        .where(where)
        .cte("src")
    )
    sums = [
        func.count().label("requests"),
        func.sum(src.c.prompt_tokens).label("prompt_tokens"),
        func.sum(src.c.completion_tokens).label("completion_tokens"),
        func.sum(src.c.hit).label("cache_hits"),
        func.sum(src.c.err).label("errors"),
        func.sum(src.c.cost_usd).label("cost_usd"),
        func.sum(src.c.baseline_cost_usd).label("baseline_cost_usd"),
        func.sum(src.c.saved_usd).label("saved_usd"),
    ]
    names = [f"lat_{kind}_{i:02d}" for kind in ("total", "ttft") for i in range(len(bounds) + 1)]
    counts = [*_hist(src.c.timed_total, bounds), *_hist(src.c.timed_ttft, bounds)]
    hist = [c.label(n) for c, n in zip(counts, names, strict=True)]
    no_hist = [cast(null(), BigInteger()).label(n) for n in names]
    by_key = [literal_column(str(i), Integer()) for i in (2, 3, 4)]
    branches = []
    for dim in DIMENSIONS:
        value = literal_column("''", String()) if dim == "total" else src.c[dim]
        branches.append(
            select(
                literal_column(f"'{dim}'", String()).label("dim"),
                src.c.bucket_ms,
                src.c.key_id,
                value.label("value"),
                *sums,
                *(hist if dim == "model" or hist_every_dim else no_hist),
            ).group_by(*by_key)
        )
    rows = union_all(*branches).subquery("r")
    return select(*rows.c).where(true()).order_by(*(rows.c[k] for k in KEY_COLUMNS))


def rollup_upsert(
    table: Table,
    dialect: str,
    grain_ms: int,
    bounds: Sequence[float],
    where: ColumnElement[bool],
    hist_every_dim: bool = False,
) -> Insert:
    """``INSERT INTO table SELECT <rollup of the rows matching where> ON CONFLICT DO UPDATE`` (adding)."""
    names = [c.name for c in table.columns]
    source = rollup_select(grain_ms, bounds, where, hist_every_dim)
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table)
    else:  # pragma: no cover - the ledger supports these two
        raise ValueError(f"rollups need PostgreSQL or SQLite, not {dialect}")
    stmt = stmt.from_select(names, source)
    additive = [n for n in names if n not in KEY_COLUMNS]
    upsert: Insert = stmt.on_conflict_do_update(
        index_elements=[table.c[k] for k in KEY_COLUMNS],
        set_={n: table.c[n] + stmt.excluded[n] for n in additive},
    )
    return upsert


def ids_filter() -> ColumnElement[bool]:
    """``gw_ledger.id IN :ids`` (expanding): the rows a batch insert returned."""
    return ledger.c.id.in_(bindparam("ids", expanding=True))


def id_range_filter() -> ColumnElement[bool]:
    """``:lo <= gw_ledger.id < :hi``: a slice of the table (backfill)."""
    return and_(ledger.c.id >= bindparam("lo"), ledger.c.id < bindparam("hi"))


def backfill(
    conn: Connection,
    tables: dict[str, Table],
    bounds: Sequence[float],
    chunk_rows: int = 200_000,
    hist_every_dim: bool = False,
) -> int:
    """Add every existing ledger row to the (empty) rollup ``tables`` (by grain name), a slice of ids at a time;
    return the rows read. Used by the migration that creates the rollups."""
    lo, hi = conn.execute(select(func.min(ledger.c.id), func.max(ledger.c.id))).one()
    if lo is None:
        return 0
    # Aggregating a slice groups about a million rows: in memory, not spilled to disk (PostgreSQL), and the
    # rollups' indexes kept in cache while they grow (SQLite).
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL work_mem = '256MB'"))
    elif conn.dialect.name == "sqlite":
        conn.execute(text("PRAGMA cache_size = -262144"))
    stmts = [
        rollup_upsert(table, conn.dialect.name, GRAINS_MS[grain], bounds, id_range_filter(), hist_every_dim)
        for grain, table in tables.items()
    ]
    start = int(lo)
    while start <= int(hi):
        for stmt in stmts:
            conn.execute(stmt, {"lo": start, "hi": start + chunk_rows})
        start += chunk_rows
    if conn.dialect.name == "sqlite":
        conn.execute(text(f"PRAGMA cache_size = {_SQLITE_CACHE_KIB}"))
    return int(conn.execute(select(func.count()).select_from(ledger)).scalar() or 0)
