"""Rollups: the ledger's sums per time bucket (minute, hour, day), key, dimension and value.

Each rollup row adds up the raw rows of one bucket for one ``(key_id, dim, value)``: ``dim`` is ``total``
(value ``''``), ``model`` (the chosen model), ``route``, ``team`` or ``user``; a NULL key or value is stored as
``''`` (unique keys must not hold NULL). The writer sums the rows its insert wrote with :class:`RollupSums` and
adds the sums in the same transaction (:func:`upsert_sql`, :func:`unnest_upsert_sql`): a retried batch adds
nothing twice (:meth:`gateway.accounting.ledger.SqlLedger._transaction`), and money stays exact (quantized per
row as stored, added as integer 1e-12 USD). The migration's backfill sums existing rows in the database instead
(:func:`rollup_select`, the same arithmetic as a ``SUM`` over the raw rows).

Latency histograms (counts per bucket of :data:`~gateway.accounting.schema.LATENCY_BOUNDS_MS`, mergeable by
addition) are kept on the ``model`` rows only.

Two writers adding to the same bucket serialise on the rollup row (``ON CONFLICT DO UPDATE`` adds to it);
both insert in key order, so they take the row locks in the same order.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal, localcontext
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
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Insert

from gateway.accounting.db import SQLITE_CACHE_KIB
from gateway.accounting.schema import (
    DIMENSIONS,
    GRAINS_MS,
    KEY_COLUMNS,
    MONEY_COLUMNS,
    MONEY_PLACES,
    ledger,
)
from gateway.context import CACHE_HITS

_HIT = ledger.c.cache_status.in_(CACHE_HITS)
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
    return _adding(_insert(table, dialect).from_select(names, source), table, names)


def _insert(table: Table, dialect: str) -> Any:
    """The dialect's ``INSERT`` (the one with ``ON CONFLICT``)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"rollups need PostgreSQL or SQLite, not {dialect}")  # pragma: no cover - the ledger's two


def _adding(stmt: Any, table: Table, names: Sequence[str]) -> Insert:
    """``stmt ON CONFLICT (key) DO UPDATE`` adding the inserted value of each of ``names`` but the key's."""
    upsert: Insert = stmt.on_conflict_do_update(
        index_elements=[table.c[k] for k in KEY_COLUMNS],
        set_={n: table.c[n] + stmt.excluded[n] for n in names if n not in KEY_COLUMNS},
    )
    return upsert


_Q = Decimal(1).scaleb(-MONEY_PLACES)
_HIT_STATUSES = frozenset(CACHE_HITS)
#: The dimensions read from the ledger column of the same name (``total`` and ``model`` are not).
_OTHER_DIMS = tuple(d for d in DIMENSIONS if d not in ("total", "model"))


_Key = tuple[str, int, str, str]
_Row = tuple[Any, ...]


class RollupSums:
    """The rollup rows that ledger rows (as written) add up to, accumulated a slice of rows at a time (:meth:`add`,
    short steps on the event loop) and read once (:meth:`grains`).

    The same sums as :func:`rollup_select` computes in the database: money quantized to the ledger's 1e-12 USD per
    row and added exactly (integers), histograms only on the ``model`` rows. Each row's values are kept once; each
    rollup row remembers which rows it adds up, and :meth:`grains` sums those columns (in C, ``sum`` over ``zip``)
    rather than adding every row to five rollup rows in Python.
    """

    def __init__(self, grains_ms: Sequence[int], bounds: Sequence[float]) -> None:
        self._grains = grains_ms
        self._bounds = bounds
        self._n_hist = len(bounds) + 1
        self._values: list[tuple[int, ...]] = []
        self._members: dict[_Key, list[int]] = {}
        self._hists: dict[_Key, list[int]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def add(self, rows: Sequence[Mapping[str, Any]], units: Sequence[tuple[int, int, int]] | None = None) -> None:
        """Add ``rows`` (ledger rows as written: money as Decimal or USD numbers), whose cost, baseline cost and
        savings as stored, in integer 1e-12 USD, are ``units`` (computed here if not given)."""
        bounds, n_hist, grain = self._bounds, self._n_hist, self._grains[0]
        values, members, hists = self._values, self._members, self._hists
        if units is None:
            with localcontext() as ctx:
                ctx.prec = 60  # quantizing stays exact (NUMERIC(20, 12) has 20 digits)
                units = [
                    (
                        int(Decimal(row["cost_usd"]).quantize(_Q).scaleb(MONEY_PLACES)),
                        int(Decimal(row["baseline_cost_usd"]).quantize(_Q).scaleb(MONEY_PLACES)),
                        int(Decimal(row["saved_usd"]).quantize(_Q).scaleb(MONEY_PLACES)),
                    )
                    for row in rows
                ]
        for row, (cost, base, saved) in zip(rows, units, strict=True):
            i = len(values)
            hit = row["cache_status"] in _HIT_STATUSES
            err = row["status_code"] >= 400
            model = row.get("chosen_model")
            values.append(
                (
                    1,
                    row["prompt_tokens"],
                    row["completion_tokens"],
                    1 if hit else 0,
                    1 if err else 0,
                    cost,
                    base,
                    saved,
                )
            )
            bucket = row["ts_ms"] // grain * grain
            key_id = row.get("key_id") or ""
            model_key = ("model", bucket, key_id, model or "")
            for key in (
                ("total", bucket, key_id, ""),
                model_key,
                *((dim, bucket, key_id, row.get(dim) or "") for dim in _OTHER_DIMS),
            ):
                found = members.get(key)
                if found is None:
                    members[key] = [i]
                else:
                    found.append(i)
            hist = hists.get(model_key)
            if hist is None:
                hist = hists[model_key] = [0] * (2 * n_hist)
            if model is not None and not err and not hit:  # timed
                total_ms, ttft_ms = row.get("total_ms"), row.get("ttft_ms")
                if total_ms is not None:
                    hist[bisect.bisect_right(bounds, total_ms)] += 1
                if ttft_ms is not None:
                    hist[n_hist + bisect.bisect_right(bounds, ttft_ms)] += 1

    def grains(self, money: Callable[[int], Any] | None = None) -> Iterator[tuple[list[_Row], list[_Row]]]:
        """Per grain (finest first, each a multiple of the previous), computed as it is asked for (the writer sends
        each grain's upserts before the next is summed: shorter steps on the event loop): the rows with histograms
        (``model``), then the others, each list in key order (two writers take the row locks in the same order). A
        row is a tuple in the rollup table's column order: the key, the counts, the money (integer 1e-12 USD, or
        ``money(units)``), the two histograms (only on the first list's rows: the others leave them NULL)."""
        values = self._values
        sums: dict[_Key, list[Any]] = {}
        for key, idx in self._members.items():
            row = (
                list(values[idx[0]]) if len(idx) == 1 else [sum(c) for c in zip(*[values[i] for i in idx], strict=True)]
            )
            hist = self._hists.get(key)
            sums[key] = [*row, None if hist is None else list(hist)]
        yield _as_rows(sums, money)
        # Each coarser grain merges the finer one's sums (fewer than the raw rows): its buckets nest.
        for grain_ms in self._grains[1:]:
            coarse: dict[_Key, list[Any]] = {}
            for (dim, bucket, key_id, value), cur in sums.items():
                key = (dim, bucket // grain_ms * grain_ms, key_id, value)
                into = coarse.get(key)
                if into is None:
                    coarse[key] = [*cur[:8], None if cur[8] is None else list(cur[8])]
                    continue
                for i in range(8):
                    into[i] += cur[i]
                if cur[8] is not None:
                    into[8] = [x + y for x, y in zip(into[8], cur[8], strict=True)]
            sums = coarse
            yield _as_rows(sums, money)


def _as_rows(sums: dict[_Key, list[Any]], money: Callable[[int], Any] | None) -> tuple[list[_Row], list[_Row]]:
    with_hist: list[_Row] = []
    plain: list[_Row] = []
    for key in sorted(sums):
        cur = sums[key]
        amounts = cur[5:8] if money is None else [money(v) for v in cur[5:8]]
        if cur[8] is None:
            plain.append((*key, *cur[:5], *amounts))
        else:
            with_hist.append((*key, *cur[:5], *amounts, *cur[8]))
    return with_hist, plain


def upsert_sql(table: Table, dialect: Dialect, hist: bool) -> str:
    """:func:`values_upsert` as the driver's SQL, its parameters in the table's column order, with or without the
    histograms (what :meth:`RollupSums.grains` gives): a batch's sums go to the driver's ``executemany`` as they are."""
    names = [c.name for c in table.columns if hist or not c.name.startswith("lat_")]
    compiled = values_upsert(table, dialect.name, names).compile(dialect=dialect, column_keys=names)
    if list(compiled.positiontup or ()) != names:  # pragma: no cover - a named paramstyle
        raise ValueError(f"rollup upsert needs a positional paramstyle, not {dialect.paramstyle}")
    return compiled.string


def unnest_upsert_sql(table: Table, hist: bool) -> str:
    """PostgreSQL: ``INSERT INTO table SELECT * FROM unnest($1::varchar[], ...) ON CONFLICT DO UPDATE`` (adding),
    one array parameter per column, with or without the histograms: a batch's sums in one statement of a fixed
    text (one round trip, one plan), rather than a statement per row."""
    names = [c.name for c in table.columns if hist or not c.name.startswith("lat_")]
    kinds = {c.name: "varchar" if isinstance(c.type, String) else "bigint" for c in table.columns}
    for name in MONEY_COLUMNS:
        kinds[name] = "numeric"
    arrays = ", ".join(f"${i}::{kinds[n]}[]" for i, n in enumerate(names, 1))
    updates = ", ".join(f"{n} = {table.name}.{n} + excluded.{n}" for n in names if n not in KEY_COLUMNS)
    return (
        f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {updates}"
    )


def values_upsert(table: Table, dialect: str, names: Sequence[str]) -> Insert:
    """``INSERT INTO table (names) VALUES (...) ON CONFLICT DO UPDATE`` adding each of ``names`` (executed with many
    rows, from :class:`RollupSums`); a NULL histogram stays NULL."""
    return _adding(_insert(table, dialect), table, names)


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
        conn.execute(text(f"PRAGMA cache_size = {SQLITE_CACHE_KIB}"))
    return int(conn.execute(select(func.count()).select_from(ledger)).scalar() or 0)
