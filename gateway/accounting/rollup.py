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
    Table,
    and_,
    bindparam,
    case,
    func,
    literal,
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
    COUNT_COLUMNS,
    DIMENSIONS,
    GRAINS_MS,
    KEY_COLUMNS,
    MONEY_COLUMNS,
    ledger,
)

#: The gateway's SQLite page cache per connection (negative: KiB), as :mod:`gateway.accounting.db` sets it.
_SQLITE_CACHE_KIB = -32768
_HIT = ledger.c.cache_status.in_(("hit", "semantic-hit"))
#: Rows whose latency is summarised: answered by a model, successful, not from the cache.
_TIMED = and_(ledger.c.chosen_model.is_not(None), ledger.c.status_code < 400, ~_HIT)


def _dims() -> Any:
    parts = [select(literal(d, type_=ledger.c.endpoint.type).label("dim")) for d in DIMENSIONS]
    return union_all(*parts).subquery("d")


def _hist(
    column: ColumnElement[Any], bounds: Sequence[float], dim: ColumnElement[Any], every_dim: bool
) -> list[ColumnElement[Any]]:
    out: list[ColumnElement[Any]] = []
    edges: list[float | None] = [None, *bounds, None]
    for lo, hi in itertools.pairwise(edges):
        cond = [_TIMED, column.is_not(None)]
        if lo is not None:
            cond.append(column >= lo)
        if hi is not None:
            cond.append(column < hi)
        count = func.coalesce(func.sum(case((and_(*cond), 1), else_=0)), 0)
        out.append(count if every_dim else case((dim == "model", count), else_=null()))
    return out


def rollup_select(
    grain_ms: int, bounds: Sequence[float], where: ColumnElement[bool], hist_every_dim: bool = False
) -> Select[Any]:
    """The rollup rows (in key order) that the ledger rows matching ``where`` add up to, at ``grain_ms``.

    Columns: the key (dim, bucket_ms, key_id, value), the counts, the money, the total-time histogram, the
    time-to-first-token histogram (``len(bounds) + 1`` buckets each; NULL but on the model rows, unless
    ``hist_every_dim``: how revision 0002 filled them).
    """
    d = _dims()
    grain: ColumnElement[int] = literal_column(str(int(grain_ms)), BigInteger())  # inlined: one GROUP BY expr
    value = case(
        (d.c.dim == "model", func.coalesce(ledger.c.chosen_model, "")),
        (d.c.dim == "route", func.coalesce(ledger.c.route, "")),
        (d.c.dim == "team", func.coalesce(ledger.c.team, "")),
        (d.c.dim == "user", func.coalesce(ledger.c.user, "")),
        else_="",
    )
    sums: dict[str, ColumnElement[Any]] = {
        "requests": func.count(),
        "prompt_tokens": func.coalesce(func.sum(ledger.c.prompt_tokens), 0),
        "completion_tokens": func.coalesce(func.sum(ledger.c.completion_tokens), 0),
        "cache_hits": func.coalesce(func.sum(case((_HIT, 1), else_=0)), 0),
        "errors": func.coalesce(func.sum(case((ledger.c.status_code >= 400, 1), else_=0)), 0),
        "cost_usd": func.sum(ledger.c.cost_usd),
        "baseline_cost_usd": func.sum(ledger.c.baseline_cost_usd),
        "saved_usd": func.sum(ledger.c.saved_usd),
    }
    keys = [
        d.c.dim,
        ((ledger.c.ts_ms // grain) * grain).label("bucket_ms"),
        func.coalesce(ledger.c.key_id, "").label("key_id"),
        value.label("value"),
    ]
    ordinals = [literal_column(str(i), Integer()) for i in range(1, len(keys) + 1)]
    return (
        select(
            *keys,
            *(sums[c].label(c) for c in (*COUNT_COLUMNS, *MONEY_COLUMNS)),
            *_hist(ledger.c.total_ms, bounds, d.c.dim, hist_every_dim),
            *_hist(ledger.c.ttft_ms, bounds, d.c.dim, hist_every_dim),
        )
        .select_from(ledger.join(d, true()))
        .where(where)
        .group_by(*ordinals)
        .order_by(*ordinals)
    )


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
