"""The quality report (``GET /admin/quality``) and feedback (``POST /v1/feedback``), over the ledger's database.

**Estimate.** For each group, the share of judged samples whose served answer was at least as good as the
reference's: ``(wins + ties) / samples``, with a 95% Wilson score interval. For a route, the figure that
matters is over all of its traffic, so requests the reference itself answered count as ties: with ``s`` the
share of the route's answered, uncached requests served by another model, the route's quality relative to
its reference is ``1 - s * (1 - p)`` (its interval maps the same way). ``cost_share`` is the group's cost over
what the ledger's baseline model would have cost for the same tokens (cache hits included: they cost nothing).

Monitoring rows (``policy = 'monitor'``) are left out of the traffic and cost figures; their cost is the
``monitoring_spend_usd`` of the group: per route, every monitoring call's ledger row, those of samples that
came to no verdict (a judge's unusable reply, a timeout) included; per model, the costs of the judged samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, case, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.quality_tables import feedback, verdicts
from gateway.accounting.schema import ledger
from gateway.context import CACHE_HITS
from gateway.errors import InvalidRequest

GroupBy = Literal["route", "model"]
GROUP_BY = ("route", "model")
_Z95 = 1.959964
_CLIENT = or_(ledger.c.policy.is_(None), ledger.c.policy != "monitor")
_HIT = ledger.c.cache_status.in_(CACHE_HITS)
#: The ledger's endpoints of chat answers: the Responses and Messages front doors are chat requests translated
#: (the monitor samples them; the route's traffic and cost share must count them too).
_CHATS = ("chat", "responses", "compact", "messages")
#: A request's latest feedback (one row each since feedback replaces feedback; two may race, or predate that).
_LATEST_FEEDBACK = select(func.max(feedback.c.id)).group_by(feedback.c.request_id, feedback.c.key_id)


def wilson(successes: float, n: float, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / n`` ((0, 1) when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(slots=True)
class _Group:
    samples: int = 0
    wins: int = 0
    ties: int = 0
    losses: int = 0
    feedback: int = 0
    feedback_mean: float | None = None
    spend: Decimal = Decimal(0)
    requests: int = 0
    answered: int = 0  # status 200, not from the cache
    by_reference: int = 0  # of those, answered by the route's reference
    cost: Decimal = Decimal(0)
    baseline: Decimal = Decimal(0)
    semantic_checked: int = 0
    semantic_wrong: int = 0


def _window(col: ColumnElement[Any], start_ms: int | None, end_ms: int | None) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if start_ms is not None:
        out.append(col >= start_ms)
    if end_ms is not None:
        out.append(col < end_ms)
    return out


async def quality_report(
    engine: AsyncEngine,
    group_by: GroupBy,
    *,
    reference: dict[str, str],
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Per route or model: verdict counts, the estimate with its interval, feedback, spend, cost share."""
    vcol = verdicts.c.route if group_by == "route" else verdicts.c.model
    fcol = feedback.c.route if group_by == "route" else feedback.c.model
    lcol = ledger.c.route if group_by == "route" else ledger.c.chosen_model
    groups: dict[str, _Group] = {}

    def g(name: Any) -> _Group:
        return groups.setdefault(str(name), _Group())

    async with engine.connect() as conn:
        # From the oldest raw row on: a route's estimate weighs its verdicts by the traffic they sample, which only
        # the raw rows hold, and retention deletes them (not the verdicts): over an expired period every request
        # counted as served by another model, and the estimate fell to the sampled rate (0.9 -> 0.0).
        oldest = (await conn.execute(select(func.min(ledger.c.ts_ms)))).scalar()
        if oldest is not None and (start_ms is None or start_ms < oldest):
            start_ms = int(oldest)
        vwin = _window(verdicts.c.ts_ms, start_ms, end_ms)
        rows = await conn.execute(
            select(vcol, verdicts.c.verdict, func.count())
            .where(verdicts.c.kind == "pairwise", *vwin)
            .group_by(vcol, verdicts.c.verdict)
        )
        for name, verdict, n in rows:
            if name is None:
                continue
            grp = g(name)
            grp.samples += n
            if verdict == "win":
                grp.wins += n
            elif verdict == "tie":
                grp.ties += n
            else:
                grp.losses += n
        if group_by == "route":  # every monitoring call, those of samples that came to no verdict too
            rows = await conn.execute(
                select(ledger.c.route, func.sum(ledger.c.cost_usd))
                .where(ledger.c.policy == "monitor", *_window(ledger.c.ts_ms, start_ms, end_ms))
                .group_by(ledger.c.route)
            )
        else:  # a monitoring call's row names the model it called, not the one judged: the verdicts' costs
            rows = await conn.execute(
                select(vcol, func.sum(verdicts.c.reference_cost_usd) + func.sum(verdicts.c.judge_cost_usd))
                .where(*vwin)
                .group_by(vcol)
            )
        for name, usd in rows:
            if name is not None:
                g(name).spend += usd or Decimal(0)
        if group_by == "route":
            rows = await conn.execute(
                select(verdicts.c.route, verdicts.c.verdict, func.count())
                .where(verdicts.c.kind == "semantic", verdicts.c.served.is_(True), *vwin)
                .group_by(verdicts.c.route, verdicts.c.verdict)
            )
            for name, verdict, n in rows:
                if name is not None:
                    g(name).semantic_checked += n
                    g(name).semantic_wrong += n if verdict == "wrong" else 0
        rows = await conn.execute(
            select(fcol, func.count(), func.avg(feedback.c.score))
            .where(*_window(feedback.c.ts_ms, start_ms, end_ms), feedback.c.id.in_(_LATEST_FEEDBACK))
            .group_by(fcol)
        )
        for name, n, mean in rows:
            if name is not None:
                g(name).feedback, g(name).feedback_mean = n, float(mean)
        answered = and_(ledger.c.status_code == 200, ~_HIT)
        rows = await conn.execute(
            select(
                lcol,
                ledger.c.chosen_model,
                func.count(),
                func.sum(case((answered, 1), else_=0)),
                func.sum(ledger.c.cost_usd),
                func.sum(ledger.c.baseline_cost_usd),
            )
            .where(_CLIENT, ledger.c.endpoint.in_(_CHATS), *_window(ledger.c.ts_ms, start_ms, end_ms))
            .group_by(lcol, ledger.c.chosen_model)
        )
        for name, model, n, n_answered, cost, baseline in rows:
            if name is None:
                continue
            grp = g(name)
            grp.requests += n
            grp.answered += int(n_answered or 0)
            if group_by == "route" and model == reference.get(str(name)):
                grp.by_reference += int(n_answered or 0)
            grp.cost += cost or Decimal(0)
            grp.baseline += baseline or Decimal(0)
    return [_render(name, grp, group_by, reference) for name, grp in sorted(groups.items())]


def _render(name: str, grp: _Group, group_by: GroupBy, reference: dict[str, str]) -> dict[str, Any]:
    not_worse = grp.wins + grp.ties
    p = not_worse / grp.samples if grp.samples else None
    low, high = wilson(not_worse, grp.samples)
    out: dict[str, Any] = {
        group_by: name,
        "samples": grp.samples,
        "wins": grp.wins,
        "ties": grp.ties,
        "losses": grp.losses,
        "sampled_estimate": {"rate": p, "ci95_low": low, "ci95_high": high},
        "feedback": {"count": grp.feedback, "mean": grp.feedback_mean},
        "monitoring_spend_usd": f"{grp.spend:f}",
        "requests": grp.requests,
        "cost_usd": f"{grp.cost:f}",
        "baseline_cost_usd": f"{grp.baseline:f}",
        "cost_share": float(grp.cost / grp.baseline) if grp.baseline else None,
    }
    estimate = {"rate": p, "ci95_low": low, "ci95_high": high}
    if group_by == "route":
        out["reference_model"] = reference.get(name)
        # no answered request in the window (its raw rows expired): the traffic the samples stand for is unknown
        share = 1 - grp.by_reference / grp.answered if grp.answered else None
        out["served_by_others"] = share
        if share is None:
            estimate = {"rate": None, "ci95_low": None, "ci95_high": None}
        elif p is not None:
            estimate = {
                "rate": 1 - share * (1 - p),
                "ci95_low": 1 - share * (1 - low),
                "ci95_high": 1 - share * (1 - high),
            }
        f_low, f_high = wilson(grp.semantic_wrong, grp.semantic_checked)
        out["semantic_false_hits"] = {
            "checked": grp.semantic_checked,
            "wrong": grp.semantic_wrong,
            "rate": grp.semantic_wrong / grp.semantic_checked if grp.semantic_checked else None,
            "ci95_low": f_low,
            "ci95_high": f_high,
        }
    out["estimate"] = estimate
    return out


# -- feedback ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """A stored feedback row's facts."""

    request_id: str
    score: float
    route: str | None
    model: str | None


async def add_feedback(
    engine: AsyncEngine,
    request_id: str,
    score: float,
    comment: str | None,
    *,
    key_id: str | None,
    team: str | None,
    keys_enabled: bool,
) -> FeedbackResult | None:
    """Store feedback on one of the caller's requests; None when the caller has no request ``request_id``.

    With virtual keys on, the request must be the caller's key's own, or its team's; with keys off, any
    request the ledger holds (there is no caller to tell apart). A request that was not answered (an error)
    is refused with :class:`InvalidRequest`. Feedback given again replaces the request's earlier feedback:
    one row per request, so repeating it neither weighs more in the report nor grows the table.
    """
    cond = [ledger.c.request_id == request_id, _CLIENT]
    if keys_enabled:
        owner = ledger.c.key_id == key_id
        cond.append(or_(owner, ledger.c.team == team) if team else owner)
    async with engine.begin() as conn:
        found = (
            await conn.execute(
                select(ledger.c.route, ledger.c.chosen_model, ledger.c.key_id, ledger.c.team, ledger.c.status_code)
                .where(*cond)
                .order_by(ledger.c.id.desc())
                .limit(1)
            )
        ).first()
        if found is None:
            return None
        route, model, status = found[0], found[1], found[4]
        if status is not None and status >= 400:
            raise InvalidRequest(
                f"Request '{request_id}' was not answered (status {status}): feedback is on answers.",
                param="request_id",
                code="request_not_answered",
            )
        await conn.execute(
            delete(feedback).where(
                feedback.c.request_id == request_id, feedback.c.key_id.is_not_distinct_from(found[2])
            )
        )
        await conn.execute(
            feedback.insert(),
            [
                {
                    "ts_ms": int(time.time() * 1000),
                    "request_id": request_id,
                    "key_id": found[2],  # the request's key (a teammate may give feedback on it)
                    "team": found[3],
                    "route": route,
                    "model": model,
                    "score": score,
                    "comment": comment,
                }
            ],
        )
    return FeedbackResult(request_id, score, route, model)
