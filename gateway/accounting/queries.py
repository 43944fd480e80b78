"""Spend aggregations over the ledger, shared by the spend API, the dashboard and ``gateway spend``.

Every money column is summed by the database in exact arithmetic (see :mod:`gateway.accounting.schema`)
and comes back as :class:`~decimal.Decimal`; JSON renders it as a decimal string.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import BigInteger, ColumnElement, case, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.schema import api_keys, ledger

GroupBy = Literal["model", "key", "team", "user", "route", "day"]
GROUPS: dict[str, ColumnElement[Any]] = {
    "model": ledger.c.chosen_model,
    "key": ledger.c.key_id,
    "team": ledger.c.team,
    "user": ledger.c.user,
    "route": ledger.c.route,
    "day": ledger.c.day,
}
_HIT = ledger.c.cache_status.in_(("hit", "semantic-hit"))
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BUCKETS_S = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


def parse_time(value: str | None, *, now: float | None = None) -> int | None:
    """Epoch milliseconds for ``value``: ``24h``/``7d``/``30m`` ago, an ISO date or datetime (UTC when
    naive), or epoch seconds; ``None`` for an empty value.

    Raises:
        ValueError: the value is none of these.
    """
    if value is None or not value.strip():
        return None
    now = time.time() if now is None else now
    m = _RELATIVE.match(value)
    if m:
        return _in_range(int((now - float(m.group(1)) * _UNIT_S[m.group(2)]) * 1000), value)
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"not a time: {value!r} (epoch seconds must be a finite number)")
        return _in_range(int(seconds * 1000), value)
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {value!r} (use 24h, 7d, an ISO date/datetime or epoch seconds)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return _in_range(int(dt.timestamp() * 1000), value)


#: Epoch milliseconds of 0001-01-01 and 9999-12-31 UTC: what datetimes (and the ledger's columns) can hold.
_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_799_000


def _in_range(ms: int, value: str) -> int:
    if not _MIN_MS <= ms <= _MAX_MS:
        raise ValueError(f"not a time: {value!r} (out of range: years 1 to 9999)")
    return ms


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


def _aggregates() -> list[ColumnElement[Any]]:
    return [
        func.count().label("requests"),
        func.coalesce(func.sum(ledger.c.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(ledger.c.completion_tokens), 0).label("completion_tokens"),
        func.sum(ledger.c.cost_usd).label("cost_usd"),
        func.sum(ledger.c.baseline_cost_usd).label("baseline_cost_usd"),
        func.sum(ledger.c.saved_usd).label("saved_usd"),
        func.coalesce(func.sum(case((_HIT, 1), else_=0)), 0).label("cache_hits"),
        func.coalesce(func.sum(case((ledger.c.status_code >= 400, 1), else_=0)), 0).label("errors"),
    ]


def _where(start_ms: int | None, end_ms: int | None, key_id: str | None) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if start_ms is not None:
        out.append(ledger.c.ts_ms >= start_ms)
    if end_ms is not None:
        out.append(ledger.c.ts_ms < end_ms)
    if key_id is not None:
        out.append(ledger.c.key_id == key_id)
    return out


def _spend_row(group: Any, r: Any) -> SpendRow:
    return SpendRow(
        group=None if group is None else str(group),
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
    """Totals per group (most expensive first; by date for ``day``), optionally for one key only."""
    col = GROUPS[group_by]
    stmt = select(col.label("grp"), *_aggregates()).where(*_where(start_ms, end_ms, key_id)).group_by(col)
    if group_by == "day":
        stmt = stmt.order_by(col)
    else:
        stmt = stmt.order_by(func.sum(ledger.c.cost_usd).desc(), func.count().desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    async with engine.connect() as conn:
        rows = [_spend_row(r.grp, r) for r in (await conn.execute(stmt)).all()]
        if group_by == "key":
            ids = [r.group for r in rows if r.group]
            if ids:
                found = await conn.execute(select(api_keys.c.id, api_keys.c.name).where(api_keys.c.id.in_(ids)))
                names = {i: n for i, n in found.all()}
                for r in rows:
                    r.name = names.get(r.group or "")
    return rows


async def totals(
    engine: AsyncEngine, *, start_ms: int | None = None, end_ms: int | None = None, key_id: str | None = None
) -> SpendRow:
    """One row of totals over the whole range."""
    stmt = select(*_aggregates()).where(*_where(start_ms, end_ms, key_id))
    async with engine.connect() as conn:
        r = (await conn.execute(stmt)).one()
    return _spend_row(None, r)


def bucket_seconds(span_s: float, target_buckets: int = 60) -> int:
    """A round bucket width giving about ``target_buckets`` buckets over ``span_s`` seconds."""
    for width in _BUCKETS_S:
        if span_s / width <= target_buckets * 1.01:  # "1h" ago .. now is a hair over an hour
            return width
    return _BUCKETS_S[-1]


async def timeseries(
    engine: AsyncEngine, *, start_ms: int, end_ms: int, bucket_s: int, key_id: str | None = None
) -> list[dict[str, Any]]:
    """Spend, requests and tokens per time bucket and model (``bucket`` is the bucket's start, epoch ms)."""
    width: ColumnElement[int] = literal_column(
        str(int(bucket_s) * 1000), BigInteger()
    )  # inlined: PostgreSQL must see one GROUP BY expression
    bucket = ((ledger.c.ts_ms // width) * width).label("bucket")
    stmt = (
        select(
            bucket,
            ledger.c.chosen_model.label("model"),
            func.count().label("requests"),
            func.coalesce(func.sum(ledger.c.prompt_tokens + ledger.c.completion_tokens), 0).label("tokens"),
            func.sum(ledger.c.cost_usd).label("cost_usd"),
            func.sum(ledger.c.baseline_cost_usd).label("baseline_cost_usd"),
        )
        .where(*_where(start_ms, end_ms, key_id))
        .group_by(literal_column("bucket"), ledger.c.chosen_model)
        .order_by(literal_column("bucket"))
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        {
            "bucket": int(r.bucket),
            "model": r.model,
            "requests": int(r.requests),
            "tokens": int(r.tokens),
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


async def latency(
    engine: AsyncEngine, *, start_ms: int | None, end_ms: int | None, sample_rows: int
) -> dict[str, dict[str, Any]]:
    """p50/p95 of total time and time to first token per backend, over the newest ``sample_rows``
    successful, uncached requests of the range."""
    stmt = (
        select(ledger.c.chosen_model, ledger.c.total_ms, ledger.c.ttft_ms)
        .where(
            *_where(start_ms, end_ms, None),
            ledger.c.chosen_model.is_not(None),
            ledger.c.status_code < 400,
            ~_HIT,
        )
        .order_by(ledger.c.ts_ms.desc())
        .limit(sample_rows)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    total: dict[str, list[float]] = {}
    ttft: dict[str, list[float]] = {}
    for model, total_ms, ttft_ms in rows:
        if total_ms is not None:
            total.setdefault(model, []).append(float(total_ms))
        if ttft_ms is not None:
            ttft.setdefault(model, []).append(float(ttft_ms))
    out: dict[str, dict[str, Any]] = {}
    for model in sorted(set(total) | set(ttft)):
        t = sorted(total.get(model, []))
        f = sorted(ttft.get(model, []))
        out[model] = {
            "samples": len(t),
            "p50_ms": percentile(t, 0.50),
            "p95_ms": percentile(t, 0.95),
            "ttft_p50_ms": percentile(f, 0.50),
            "ttft_p95_ms": percentile(f, 0.95),
        }
    return out


async def first_ts_ms(engine: AsyncEngine) -> int | None:
    """The oldest row's time (epoch ms), or None for an empty ledger."""
    async with engine.connect() as conn:
        value = (await conn.execute(select(func.min(ledger.c.ts_ms)))).scalar()
    return None if value is None else int(value)


async def dashboard(
    engine: AsyncEngine, *, start_ms: int | None, end_ms: int | None, sample_rows: int = 20_000
) -> dict[str, Any]:
    """Everything the dashboard draws, for one time range."""
    now_ms = int(time.time() * 1000)
    end = end_ms if end_ms is not None else now_ms + 1
    start = start_ms if start_ms is not None else (await first_ts_ms(engine) or end - 3_600_000)
    width = bucket_seconds((end - start) / 1000)
    tot = await totals(engine, start_ms=start, end_ms=end)
    hit_rate = tot.cache_hits / tot.requests if tot.requests else 0.0
    return {
        "range": {"start_ms": start, "end_ms": end, "bucket_s": width},
        "totals": {
            **tot.to_json(),
            "cache_hit_rate": round(hit_rate, 6),
            "saved_vs_baseline_usd": money(tot.baseline_cost_usd - tot.cost_usd),
        },
        "timeseries": await timeseries(engine, start_ms=start, end_ms=end, bucket_s=width),
        "by_model": [r.to_json() for r in await spend(engine, "model", start_ms=start, end_ms=end)],
        "latency": await latency(engine, start_ms=start, end_ms=end, sample_rows=sample_rows),
        "top_keys": [r.to_json() for r in await spend(engine, "key", start_ms=start, end_ms=end, limit=10)],
        "top_users": [r.to_json() for r in await spend(engine, "user", start_ms=start, end_ms=end, limit=10)],
    }
