"""Ledger rows for the rollup tests, and the reference sums they are compared with (exact Decimal)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.ledger import Row, row_from_context
from gateway.accounting.schema import ledger, rollups
from gateway.context import RequestContext, Usage

#: 2026-03-01 00:00:00.123 UTC: not aligned to any bucket.
BASE_MS = 1_772_323_200_123
Q = Decimal(1).scaleb(-12)


@dataclass(frozen=True)
class Spec:
    """What a generated request was."""

    offset_ms: int
    key: str | None
    model: str | None
    user: str | None
    team: str | None
    route: str | None
    prompt: int
    completion: int
    cost_units: int  # 1e-12 USD
    baseline_units: int
    status: int
    cache: str
    total_ms: float | None
    ttft_ms: float | None


def make_row(spec: Spec, n: int) -> Row:
    """The ledger row of ``spec``, as the gateway's write path makes it."""
    ctx = RequestContext(request_id=f"req-{n}", endpoint="chat", body={}, requested_model=spec.model or "x")
    ctx.started_wall = (BASE_MS + spec.offset_ms) / 1000
    ctx.key_id, ctx.user, ctx.team, ctx.route, ctx.chosen_model = spec.key, spec.user, spec.team, spec.route, spec.model
    ctx.usage = Usage(prompt_tokens=spec.prompt, completion_tokens=spec.completion)
    ctx.cost_usd = Decimal(spec.cost_units) * Q
    ctx.baseline_cost_usd = Decimal(spec.baseline_units) * Q
    ctx.saved_usd = ctx.baseline_cost_usd - ctx.cost_usd
    ctx.status_code = spec.status
    ctx.cache_status = spec.cache
    ctx.total_s = None if spec.total_ms is None else spec.total_ms / 1000
    ctx.ttft_s = None if spec.ttft_ms is None else spec.ttft_ms / 1000
    row = row_from_context(ctx)
    row["ts_ms"] = BASE_MS + spec.offset_ms  # exactly (the float seconds may round a millisecond off)
    return row


def random_rows(
    seed: int, n: int, *, span_ms: int, models: tuple[str, str], with_ttft: bool = True, first_id: int = 0
) -> list[Row]:
    """``n`` rows drawn from ``seed`` over ``span_ms`` after :data:`BASE_MS`: two keys, two users, one team and
    one route (each sometimes absent), the two ``models``, some errors and cache hits."""
    rnd = random.Random(seed)
    specs = [
        Spec(
            offset_ms=rnd.randrange(0, span_ms),
            key=rnd.choice(["key-0", "key-1", None]),
            model=rnd.choice(models),
            user=rnd.choice(["u0", "u1", None]),
            team=rnd.choice(["t0", None]),
            route=rnd.choice(["r0", None]),
            prompt=rnd.randrange(1000),
            completion=rnd.randrange(1000),
            cost_units=rnd.randrange(10**13),
            baseline_units=rnd.randrange(10**13),
            status=rnd.choice([200, 200, 500]),
            cache=rnd.choice(["miss", "hit"]),
            total_ms=rnd.uniform(1, 5000),
            ttft_ms=rnd.uniform(1, 500) if with_ttft else None,
        )
        for _ in range(n)
    ]
    return [make_row(spec, first_id + i) for i, spec in enumerate(specs)]


def group_of(row: Row, group_by: str) -> str | None:
    """The group a row falls in, as the spend API names it."""
    if group_by == "day":
        return datetime.fromtimestamp(row["ts_ms"] / 1000, UTC).strftime("%Y-%m-%d")
    column = {"model": "chosen_model", "key": "key_id"}.get(group_by, group_by)
    return row[column] or None


def reference(
    rows: list[Row], group_by: str, start_ms: int | None, end_ms: int | None, key_id: str | None = None
) -> dict[str | None, tuple[Any, ...]]:
    """Per group: requests, tokens, cost, baseline, saved, cache hits, errors (summed in Python)."""
    out: dict[str | None, list[Any]] = {}
    for r in rows:
        if start_ms is not None and r["ts_ms"] < start_ms:
            continue
        if end_ms is not None and r["ts_ms"] >= end_ms:
            continue
        if key_id is not None and r["key_id"] != key_id:
            continue
        acc = out.setdefault(group_of(r, group_by), [0, 0, 0, Decimal(0), Decimal(0), Decimal(0), 0, 0])
        acc[0] += 1
        acc[1] += r["prompt_tokens"]
        acc[2] += r["completion_tokens"]
        acc[3] += r["cost_usd"]
        acc[4] += r["baseline_cost_usd"]
        acc[5] += r["saved_usd"]
        acc[6] += r["cache_status"] in ("hit", "semantic-hit")
        acc[7] += r["status_code"] >= 400
    return {k: tuple(v) for k, v in out.items()}


def as_tuple(r: Any) -> tuple[Any, ...]:
    """A SpendRow's figures in :func:`reference`'s order."""
    return (
        r.requests,
        r.prompt_tokens,
        r.completion_tokens,
        r.cost_usd,
        r.baseline_cost_usd,
        r.saved_usd,
        r.cache_hits,
        r.errors,
    )


async def clear(engine: AsyncEngine) -> None:
    """Empty the ledger and its rollups."""
    async with engine.begin() as conn:
        await conn.execute(delete(ledger))
        for table in rollups.values():
            await conn.execute(delete(table))
