"""Cascade routes in the ledger: escalation rate per route, and what the cascade cost against routing alone.

Read from the raw rows (cascade requests are a small share of traffic and carry their own columns, revision
0006): per route, the requests a cascade answered, how many escalated, what they cost (every attempt), what the
prompt router alone would have paid for the same requests (``routed_cost_usd``: its pick's price on the tokens
that model produced, or on the served answer's tokens when it was not asked) and what the baseline model would
have. ``saved_vs_routing_usd`` > 0: the cascade was cheaper than routing by the prompt alone.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, case, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.schema import MONEY_SUM, ledger

__all__ = ["cascade_by_route"]


def _usd(value: Decimal | None) -> str:
    return f"{(value or Decimal(0)):f}"


async def cascade_by_route(engine: AsyncEngine, *, start_ms: int | None, end_ms: int | None) -> list[dict[str, Any]]:
    """One entry per route that served cascade requests in ``[start_ms, end_ms)``, most requests first."""
    c = ledger.c
    where: list[ColumnElement[bool]] = [c.cascade.is_not(None)]
    if start_ms is not None:
        where.append(c.ts_ms >= start_ms)
    if end_ms is not None:
        where.append(c.ts_ms < end_ms)
    known = c.routed_cost_usd.is_not(None)
    stmt = (
        select(
            c.route,
            func.count().label("requests"),
            func.sum(case((c.cascade == "escalated", 1), else_=0)).label("escalated"),
            type_coerce(func.sum(c.cost_usd), MONEY_SUM).label("cost_usd"),
            type_coerce(func.sum(case((known, c.cost_usd), else_=None)), MONEY_SUM).label("cost_known_usd"),
            type_coerce(func.sum(c.routed_cost_usd), MONEY_SUM).label("routed_cost_usd"),
            type_coerce(func.sum(c.baseline_cost_usd), MONEY_SUM).label("baseline_cost_usd"),
            func.sum(case((known, 1), else_=0)).label("routed_known"),
        )
        .where(*where)
        .group_by(c.route)
        .order_by(func.count().desc(), c.route)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    out = []
    for r in rows:
        n, esc, known_n = int(r.requests), int(r.escalated or 0), int(r.routed_known or 0)
        routed = r.routed_cost_usd if known_n else None
        out.append(
            {
                "route": r.route,
                "requests": n,
                "escalated": esc,
                "escalation_rate": round(esc / n, 6) if n else 0.0,
                "cost_usd": _usd(r.cost_usd),
                "baseline_cost_usd": _usd(r.baseline_cost_usd),
                # over the requests where routing alone could be priced (a prompt router is configured)
                "routed_requests": known_n,
                "routed_cost_usd": None if routed is None else _usd(routed),
                "saved_vs_routing_usd": None if routed is None else _usd(routed - (r.cost_known_usd or Decimal(0))),
            }
        )
    return out
