"""Spend aggregations over the ledger, shared by the spend API, the dashboard and ``gateway spend``.

They read the rollups (:mod:`gateway.accounting.rollup`): a range is covered by whole days, hours and minutes
(:func:`split_range`), and only the partial minutes at its two ends come from the raw rows (through the
``ts_ms`` index), so a query reads a few thousand rows whatever the range and the ledger's size.

Every money column is summed by the database in exact arithmetic (see :mod:`gateway.accounting.schema`)
and comes back as :class:`~decimal.Decimal`; JSON renders it as a decimal string.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    case,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.cascade_report import cascade_by_route
from gateway.accounting.schema import (
    COUNT_COLUMNS,
    GRAINS_MS,
    LATENCY_BOUNDS_MS,
    MONEY_COLUMNS,
    MONEY_PLACES,
    MONEY_SUM,
    TOTAL_HIST,
    TTFT_HIST,
    api_keys,
    ledger,
    rollups,
)
from gateway.context import CACHE_HITS

GroupBy = Literal["model", "key", "team", "user", "route", "day"]
GROUPS: dict[str, ColumnElement[Any]] = {
    "model": ledger.c.chosen_model,
    "key": ledger.c.key_id,
    "team": ledger.c.team,
    "user": ledger.c.user,
    "route": ledger.c.route,
    "day": ledger.c.day,
}
_HIT = ledger.c.cache_status.in_(CACHE_HITS)
_TIMED = and_(ledger.c.chosen_model.is_not(None), ledger.c.status_code < 400, ~_HIT)
_DAY_MS = GRAINS_MS["day"]
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BUCKETS_S = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


def parse_time(value: str | None, *, now: float | None = None) -> int | None:
    """Epoch milliseconds for ``value``: ``24h``/``7d``/``30m`` ago, an ISO date or datetime (UTC when
    naive), or epoch seconds; ``None`` for an empty value.

    Raises:
        ValueError: the value is none of these, or a time outside years 1 to 9999.
    """
    if value is None or not value.strip():
        return None
    now = time.time() if now is None else now
    m = _RELATIVE.match(value)
    if m:
        return _epoch_ms(now - float(m.group(1)) * _UNIT_S[m.group(2)], value)
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return _epoch_ms(seconds, value)
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {value!r} (use 24h, 7d, an ISO date/datetime or epoch seconds)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return _epoch_ms(dt.timestamp(), value)


#: Epoch milliseconds of 0001-01-01 and 9999-12-31 UTC: what datetimes (and the ledger's columns) can hold.
_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_799_000


def _epoch_ms(seconds: float, value: str) -> int:
    """``seconds`` as epoch milliseconds; a ValueError when that is no time a datetime can hold (a huge
    ``111…d`` or ``1e307`` gives an infinite float, which ``int`` refuses with an OverflowError)."""
    ms = seconds * 1000
    if not math.isfinite(ms):
        raise ValueError(f"not a time: {value!r} (must be a finite time)")
    if not _MIN_MS <= ms <= _MAX_MS:
        raise ValueError(f"not a time: {value!r} (out of range: years 1 to 9999)")
    return int(ms)


#: The largest budget a key may have: SQLite stores money as int64 units of 1e-12 USD (about 9.2 million USD).
MAX_BUDGET_USD = Decimal(9_000_000)
_MONEY_STEP = Decimal(1).scaleb(-MONEY_PLACES)


def parse_budget(value: str) -> Decimal:
    """A key's budget in USD from its text form: a decimal number from 0 to :data:`MAX_BUDGET_USD`.

    Raises:
        ValueError: the value is no such number (the message says what is allowed).
    """
    try:
        budget = Decimal(value.strip())
    except InvalidOperation:
        budget = Decimal("NaN")
    if not budget.is_finite() or not 0 <= budget <= MAX_BUDGET_USD:
        raise ValueError(f"must be a decimal number from 0 to {MAX_BUDGET_USD}")
    if budget != budget.quantize(_MONEY_STEP):  # stored with MONEY_PLACES: 1e-13 would become a budget of 0
        raise ValueError(f"must have at most {MONEY_PLACES} decimal places")
    return budget


def money(value: Decimal | None) -> str:
    """A Decimal as a plain decimal string (never exponent notation)."""
    return f"{value or Decimal(0):f}"


@dataclass(slots=True)
class SpendRow:
    """Totals of one group."""

    group: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    baseline_cost_usd: Decimal
    saved_usd: Decimal
    cache_hits: int
    errors: int
    name: str | None = None  # the key's name when grouping by key

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: money as decimal strings."""
        out: dict[str, Any] = {
            "group": self.group,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": money(self.cost_usd),
            "baseline_cost_usd": money(self.baseline_cost_usd),
            "saved_usd": money(self.saved_usd),
            "cache_hits": self.cache_hits,
            "errors": self.errors,
        }
        if self.name is not None:
            out["name"] = self.name
        return out


_MEASURES = (*COUNT_COLUMNS, *MONEY_COLUMNS)


@dataclass(frozen=True, slots=True)
class Part:
    """A piece of a time range read from one source: a rollup table (``grain``) or the raw rows (``None``)."""

    grain: str | None
    start_ms: int | None
    end_ms: int | None


def _ceil(ms: int, width: int) -> int:
    return -(-ms // width) * width


def split_range(start_ms: int | None, end_ms: int | None, grains: tuple[str, ...] = tuple(GRAINS_MS)) -> list[Part]:
    """Cover ``[start_ms, end_ms)`` (None: unbounded) with whole buckets of the coarsest of ``grains`` (finest
    first) that fit, finer ones towards the edges, and raw rows for the partial minutes at either end."""
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        return []
    if not grains:
        return [Part(None, start_ms, end_ms)]
    grain, width = grains[-1], GRAINS_MS[grains[-1]]
    lo = None if start_ms is None else _ceil(start_ms, width)
    hi = None if end_ms is None else end_ms // width * width
    if lo is not None and hi is not None and lo >= hi:
        return split_range(start_ms, end_ms, grains[:-1])
    out: list[Part] = []
    if start_ms is not None and lo is not None and start_ms < lo:
        out += split_range(start_ms, lo, grains[:-1])
    out.append(Part(grain, lo, hi))
    if end_ms is not None and hi is not None and hi < end_ms:
        out += split_range(hi, end_ms, grains[:-1])
    return out


@functools.cache
def _raw_measures(hist: bool) -> tuple[ColumnElement[Any], ...]:
    """The raw rows' measures, as the rollups' columns (built once: the histograms' CASEs cost milliseconds of
    Python per statement, more than the database's work at the range's edges)."""
    out: list[ColumnElement[Any]] = [
        literal_column("1", BigInteger()).label("requests"),
        ledger.c.prompt_tokens.label("prompt_tokens"),
        ledger.c.completion_tokens.label("completion_tokens"),
        case((_HIT, 1), else_=0).label("cache_hits"),
        case((ledger.c.status_code >= 400, 1), else_=0).label("errors"),
        ledger.c.cost_usd.label("cost_usd"),
        ledger.c.baseline_cost_usd.label("baseline_cost_usd"),
        ledger.c.saved_usd.label("saved_usd"),
    ]
    if hist:
        for name, col in (("total", ledger.c.total_ms), ("ttft", ledger.c.ttft_ms)):
            edges: list[float | None] = [None, *LATENCY_BOUNDS_MS, None]
            for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
                cond = [_TIMED, col.is_not(None)]
                if lo is not None:
                    cond.append(col >= lo)
                if hi is not None:
                    cond.append(col < hi)
                out.append(case((and_(*cond), 1), else_=0).label(f"lat_{name}_{i:02d}"))
    return tuple(out)


def _part_select(
    part: Part, dim: str, groups: list[tuple[str, Callable[[Any], ColumnElement[Any]]]], key_id: str | None, hist: bool
) -> Select[Any]:
    """One part's rows: group columns then measures, from a rollup table or from the raw rows."""
    if part.grain is None:
        where = []
        if part.start_ms is not None:
            where.append(ledger.c.ts_ms >= part.start_ms)
        if part.end_ms is not None:
            where.append(ledger.c.ts_ms < part.end_ms)
        if key_id is not None:
            where.append(ledger.c.key_id == key_id)
        cols = [fn(None).label(name) for name, fn in groups]
        return select(*cols, *_raw_measures(hist)).where(*where)
    table = rollups[part.grain]
    where = [table.c.dim == dim]
    if part.start_ms is not None:
        where.append(table.c.bucket_ms >= part.start_ms)
    if part.end_ms is not None:
        where.append(table.c.bucket_ms < part.end_ms)
    if key_id is not None:
        where.append(table.c.key_id == key_id)
    measures = [table.c[c] for c in _MEASURES] + ([table.c[c] for c in TOTAL_HIST + TTFT_HIST] if hist else [])
    return select(*(fn(table).label(name) for name, fn in groups), *measures).where(*where)


def _group_fns(group_by: str) -> tuple[str, Callable[[Any], ColumnElement[Any]]]:
    """The rollup dimension to read and how a source (rollup table, or None for the raw rows) gives the group."""
    if group_by == "day":
        day = literal_column(str(_DAY_MS), BigInteger())
        return "total", lambda t: (ledger.c.ts_ms if t is None else t.c.bucket_ms) // day * day
    if group_by == "key":
        return "total", lambda t: func.coalesce(ledger.c.key_id, "") if t is None else t.c.key_id
    raw = GROUPS[group_by]
    return group_by, lambda t: func.coalesce(raw, "") if t is None else t.c.value


def _summed(
    parts: list[Part],
    dim: str,
    groups: list[tuple[str, Callable[[Any], ColumnElement[Any]]]],
    key_id: str | None,
    hist: bool = False,
) -> tuple[Any, list[ColumnElement[Any]]]:
    """The union of ``parts`` as a subquery, and its measures summed (labelled, exact money)."""
    if not parts:
        parts = [Part(None, 0, 0)]  # nothing: an empty raw range keeps the statement's shape
    union = union_all(*(_part_select(p, dim, groups, key_id, hist) for p in parts)).subquery("u")
    sums: list[ColumnElement[Any]] = [func.coalesce(func.sum(union.c[c]), 0).label(c) for c in COUNT_COLUMNS]
    sums += [type_coerce(func.sum(union.c[c]), MONEY_SUM).label(c) for c in MONEY_COLUMNS]
    if hist:
        sums += [func.coalesce(func.sum(union.c[c]), 0).label(c) for c in TOTAL_HIST + TTFT_HIST]
    return union, sums


def _group_value(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _spend_row(group: Any, r: Any) -> SpendRow:
    return SpendRow(
        group=group,
        requests=int(r.requests),
        prompt_tokens=int(r.prompt_tokens),
        completion_tokens=int(r.completion_tokens),
        cost_usd=r.cost_usd or Decimal(0),
        baseline_cost_usd=r.baseline_cost_usd or Decimal(0),
        saved_usd=r.saved_usd or Decimal(0),
        cache_hits=int(r.cache_hits),
        errors=int(r.errors),
    )


async def spend(
    engine: AsyncEngine,
    group_by: str,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    key_id: str | None = None,
    limit: int | None = None,
) -> list[SpendRow]:
    """Totals per group (most expensive first; by date for ``day``), optionally for one key only; with ``limit``,
    only that many groups (the most expensive, or the newest days), cut by the database.

    Read from the rollups (whole buckets) and the raw rows of the partial minutes at the range's ends.
    """
    dim, fn = _group_fns(group_by)
    union, sums = _summed(split_range(start_ms, end_ms), dim, [("grp", fn)], key_id)
    stmt = select(union.c.grp, *sums).group_by(union.c.grp)
    if group_by == "day":
        stmt = stmt.order_by(union.c.grp if limit is None else union.c.grp.desc())
    else:
        stmt = stmt.order_by(func.sum(union.c.cost_usd).desc(), func.sum(union.c.requests).desc(), union.c.grp)
    if limit is not None:
        stmt = stmt.limit(limit)
    async with engine.connect() as conn:
        found = (await conn.execute(stmt)).all()
        rows = [_spend_row(_day(r.grp) if group_by == "day" else _group_value(r.grp), r) for r in found]
        if group_by == "day" and limit is not None:
            rows.reverse()  # the newest days were read newest first; days are listed by date
        if group_by == "key":
            ids = [r.group for r in rows if r.group]
            if ids:
                found_names = await conn.execute(select(api_keys.c.id, api_keys.c.name).where(api_keys.c.id.in_(ids)))
                names = {i: n for i, n in found_names.all()}
                for r in rows:
                    r.name = names.get(r.group or "")
    return rows


async def spend_page(
    engine: AsyncEngine,
    group_by: str,
    *,
    limit: int,
    start_ms: int | None = None,
    end_ms: int | None = None,
    key_id: str | None = None,
) -> tuple[list[SpendRow], bool]:
    """The first ``limit`` groups of :func:`spend`, and whether there were more (left out)."""
    rows = await spend(engine, group_by, start_ms=start_ms, end_ms=end_ms, key_id=key_id, limit=limit + 1)
    if len(rows) <= limit:
        return rows, False
    # one group too many was read: the cheapest one, or for days the oldest (listed first)
    return (rows[1:] if group_by == "day" else rows[:limit]), True


def summed(rows: Sequence[SpendRow]) -> SpendRow:
    """The totals of ``rows`` (every group of a range: its totals, read in the same statement)."""
    total = SpendRow(None, 0, 0, 0, Decimal(0), Decimal(0), Decimal(0), 0, 0)
    for r in rows:
        total.requests += r.requests
        total.prompt_tokens += r.prompt_tokens
        total.completion_tokens += r.completion_tokens
        total.cost_usd += r.cost_usd
        total.baseline_cost_usd += r.baseline_cost_usd
        total.saved_usd += r.saved_usd
        total.cache_hits += r.cache_hits
        total.errors += r.errors
    return total


def _day(ms: Any) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d")


async def totals(
    engine: AsyncEngine, *, start_ms: int | None = None, end_ms: int | None = None, key_id: str | None = None
) -> SpendRow:
    """One row of totals over the whole range (from the rollups, like :func:`spend`)."""
    _, sums = _summed(split_range(start_ms, end_ms), "total", [], key_id)
    async with engine.connect() as conn:
        r = (await conn.execute(select(*sums))).one()
    return _spend_row(None, r)


def bucket_seconds(span_s: float, target_buckets: int = 60) -> int:
    """A round bucket width giving about ``target_buckets`` buckets over ``span_s`` seconds."""
    for width in _BUCKETS_S:
        if span_s / width <= target_buckets * 1.01:  # "1h" ago .. now is a hair over an hour
            return width
    return _BUCKETS_S[-1]


def _grains_within(bucket_s: int) -> tuple[str, ...]:
    """The rollup grains whose buckets nest inside buckets of ``bucket_s`` seconds."""
    return tuple(g for g, ms in GRAINS_MS.items() if (bucket_s * 1000) % ms == 0)


async def timeseries(
    engine: AsyncEngine, *, start_ms: int, end_ms: int, bucket_s: int, key_id: str | None = None
) -> list[dict[str, Any]]:
    """Spend, requests and tokens per time bucket and model (``bucket`` is the bucket's start, epoch ms)."""
    width: ColumnElement[int] = literal_column(str(int(bucket_s) * 1000), BigInteger())
    parts = split_range(start_ms, end_ms, _grains_within(bucket_s))
    groups: list[tuple[str, Callable[[Any], ColumnElement[Any]]]] = [
        ("bucket", lambda t: (ledger.c.ts_ms if t is None else t.c.bucket_ms) // width * width),
        ("model", lambda t: func.coalesce(ledger.c.chosen_model, "") if t is None else t.c.value),
    ]
    union, sums = _summed(parts, "model", groups, key_id)
    stmt = (
        select(union.c.bucket, union.c.model, *sums)
        .group_by(union.c.bucket, union.c.model)
        .order_by(union.c.bucket, union.c.model)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        {
            "bucket": int(r.bucket),
            "model": _group_value(r.model),
            "requests": int(r.requests),
            "tokens": int(r.prompt_tokens) + int(r.completion_tokens),
            "cost_usd": money(r.cost_usd),
            "baseline_cost_usd": money(r.baseline_cost_usd),
        }
        for r in rows
    ]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values) - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def hist_percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a latency histogram (:data:`LATENCY_BOUNDS_MS`), interpolated linearly within
    its bucket (the open last bucket answers its lower bound); None when it is empty."""
    n = sum(counts)
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n - 1e-9))
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            lo = 0.0 if i == 0 else float(LATENCY_BOUNDS_MS[i - 1])
            if i == len(LATENCY_BOUNDS_MS):
                return lo
            hi = float(LATENCY_BOUNDS_MS[i])
            return round(lo + (hi - lo) * (rank - seen) / c, 3)
        seen += c
    return None  # pragma: no cover - rank <= n


async def latency(
    engine: AsyncEngine, *, start_ms: int | None, end_ms: int | None, sample_rows: int | None = None
) -> dict[str, dict[str, Any]]:
    """p50/p95 of total time and time to first token per backend, over the successful, uncached requests of
    the range: from the rollups' latency histograms (mergeable; a percentile is exact to its bucket, then
    interpolated). ``sample_rows`` is accepted for compatibility and unused."""
    del sample_rows
    groups: list[tuple[str, Callable[[Any], ColumnElement[Any]]]] = [
        ("model", lambda t: func.coalesce(ledger.c.chosen_model, "") if t is None else t.c.value)
    ]
    union, sums = _summed(split_range(start_ms, end_ms), "model", groups, None, hist=True)
    stmt = select(union.c.model, *sums).group_by(union.c.model).order_by(union.c.model)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        total = [int(r._mapping[c]) for c in TOTAL_HIST]
        ttft = [int(r._mapping[c]) for c in TTFT_HIST]
        if not r.model or not (sum(total) or sum(ttft)):
            continue
        out[r.model] = {
            "samples": sum(total),
            "p50_ms": hist_percentile(total, 0.50),
            "p95_ms": hist_percentile(total, 0.95),
            "ttft_p50_ms": hist_percentile(ttft, 0.50),
            "ttft_p95_ms": hist_percentile(ttft, 0.95),
        }
    return out


async def first_ts_ms(engine: AsyncEngine) -> int | None:
    """The start of the oldest hour with a request (epoch ms), or None for an empty ledger. Hours, not minutes:
    retention deletes the minute rollups of expired hours and keeps the hour rollups, so "all time" read from the
    minutes began at the retention cutoff and left out every expired hour's spend."""
    hour = rollups["hour"]
    stmt = select(func.min(hour.c.bucket_ms)).where(hour.c.dim == "total")
    async with engine.connect() as conn:
        value = (await conn.execute(stmt)).scalar()
    return None if value is None else int(value)


async def dashboard(
    engine: AsyncEngine,
    *,
    start_ms: int | None,
    end_ms: int | None,
    sample_rows: int = 20_000,
    retention_days: float | None = None,
) -> dict[str, Any]:
    """Everything the dashboard draws, for one time range (``retention_days``: the ledger's, whose expired hours
    have hour rollups only)."""
    now_ms = int(time.time() * 1000)
    end = end_ms if end_ms is not None else now_ms + 1
    start = start_ms if start_ms is not None else (await first_ts_ms(engine) or end - 3_600_000)
    width = bucket_seconds((end - start) / 1000)
    if retention_days is not None and start < now_ms - retention_days * 86_400_000:
        # retention deletes the minute rollups of expired hours: buckets of minutes drew an empty chart beside
        # correct totals
        width = max(width, GRAINS_MS["hour"] // 1000)
    # Independent queries on separate pooled connections, at once: the refresh takes the slowest, not the sum.
    (tot, series, by_model, lat, top_keys, top_users), cascade = await asyncio.gather(
        asyncio.gather(
            totals(engine, start_ms=start, end_ms=end),
            timeseries(engine, start_ms=start, end_ms=end, bucket_s=width),
            spend(engine, "model", start_ms=start, end_ms=end),
            latency(engine, start_ms=start, end_ms=end, sample_rows=sample_rows),
            spend(engine, "key", start_ms=start, end_ms=end, limit=10),
            spend(engine, "user", start_ms=start, end_ms=end, limit=10),
        ),
        cascade_by_route(engine, start_ms=start, end_ms=end),
    )
    hit_rate = tot.cache_hits / tot.requests if tot.requests else 0.0
    return {
        "range": {"start_ms": start, "end_ms": end, "bucket_s": width},
        "totals": {
            **tot.to_json(),
            "cache_hit_rate": round(hit_rate, 6),
            "saved_vs_baseline_usd": money(tot.baseline_cost_usd - tot.cost_usd),
        },
        "timeseries": series,
        "by_model": [r.to_json() for r in by_model],
        "latency": lat,
        "top_keys": [r.to_json() for r in top_keys],
        "top_users": [r.to_json() for r in top_users],
        "cascade": cascade,
    }


# -- drill-down: raw rows, through indexes ---------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    """``value`` in UTC with its time zone: SQLite gives the ledger's (UTC) times back naive."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row_json(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row._asdict().items():
        key = str(name)  # a column name may be a str subclass (quoted_name), which orjson refuses as a key
        if isinstance(value, Decimal):
            out[key] = money(value)
        elif isinstance(value, datetime):
            out[key] = _utc(value).isoformat()
        else:
            out[key] = value
    return out


async def request_rows(engine: AsyncEngine, request_id: str) -> list[dict[str, Any]]:
    """The ledger rows of one request id (client-chosen ids can repeat), oldest first; by the request id index.
    Empty once retention has deleted them."""
    stmt = select(ledger).where(ledger.c.request_id == request_id).order_by(ledger.c.ts_ms, ledger.c.id).limit(100)
    async with engine.connect() as conn:
        return [_row_json(r) for r in (await conn.execute(stmt)).all()]


async def recent_requests(
    engine: AsyncEngine,
    *,
    key_id: str | None,
    limit: int = 50,
    before_ms: int | None = None,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """The newest raw rows (of one key, or of all), before ``before_ms`` and after the row ``before_id`` in this
    order (newest first, then by id: a page's last row's id is the next page's cursor; a time alone skipped the
    rows sharing the last row's millisecond); by the ``(key_id, ts_ms)`` or ``ts_ms`` index."""
    stmt = select(ledger).order_by(ledger.c.ts_ms.desc(), ledger.c.id.desc()).limit(limit)
    if key_id is not None:
        stmt = stmt.where(ledger.c.key_id == key_id)
    if before_ms is not None:
        stmt = stmt.where(ledger.c.ts_ms < before_ms)
    if before_id is not None:
        at = select(ledger.c.ts_ms).where(ledger.c.id == before_id).scalar_subquery()
        stmt = stmt.where(or_(ledger.c.ts_ms < at, and_(ledger.c.ts_ms == at, ledger.c.id < before_id)))
    async with engine.connect() as conn:
        return [_row_json(r) for r in (await conn.execute(stmt)).all()]
