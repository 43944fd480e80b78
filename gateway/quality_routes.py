"""Quality routes: ``POST /v1/feedback`` (a caller's score for one of its requests) and ``GET /admin/quality``.

* ``POST /v1/feedback`` ``{"request_id", "score" (0..1, or true/false), "comment"?}`` or ``"thumbs": "up"|"down"``
  instead of ``score``: 201 with the stored facts; 404 when the caller has no such request; 429 (with
  ``retry-after``) when the key's requests per minute are spent (one request of its RPM, as inference).
* ``GET /admin/quality?group_by=route|model&start=&end=`` (master key): see :mod:`gateway.quality.report`. Its
  ``monitor`` object is the same from every worker and replica but for its ``process_*`` fields (and, without
  Redis, its ``budget_*_usd``):

  - ``daily_budget_usd``: ``quality.daily_budget_usd``, per UTC day.
  - ``spent_today_usd``: the ledger's sum of today's (UTC) monitoring rows, every process's: the deployment's
    spend (another process's last calls join it within its ``ledger.flush_interval_seconds``).
  - ``budget_store``: ``redis`` (one counter for every process) or ``process`` (each process's own figure, which
    reads the ledger's before a sample when older than ``quality.budget_sync_seconds``).
  - ``budget_counted_usd``, ``budget_reserved_usd``: what the cap is checked against now, the settled spend and
    what the samples in flight hold (with Redis: every process's, read from Redis for this answer, null when it
    does not answer within a second; that read changes nothing for sampling; else this process's).
  - ``process_queued``, ``process_in_progress``: samples waiting in, and being judged by, the process that answered.
  - ``queued``: deprecated alias of ``process_queued`` (this process's queue), kept for the clients that read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.admin_routes import _fresh, _iso, _ledger, _range, database_errors, refuse_nul
from gateway.auth.admission import KeyAdmission
from gateway.auth.request_rate import charge_request
from gateway.background import wait_recorded
from gateway.errors import InvalidRequest, NotFound
from gateway.protocol import load_json_object
from gateway.quality.report import GROUP_BY, add_feedback, quality_report
from gateway.quality.spend import monitoring_spend_today
from gateway.routes import context, gateway_of, json_response, read_body, require_admin
from gateway.runtime import Gateway, describe_router

router = APIRouter()
_MAX_COMMENT = 2000
#: How long ``/admin/quality`` waits for the budget's current figures (Redis).
_COUNTED_TIMEOUT_S = 1.0


def _score(body: dict[str, Any]) -> float:
    if "thumbs" in body and "score" not in body:
        thumbs = body["thumbs"]
        if thumbs not in ("up", "down"):
            raise InvalidRequest("'thumbs' must be 'up' or 'down'.", param="thumbs")
        return 1.0 if thumbs == "up" else 0.0
    score = body.get("score")
    if isinstance(score, bool):
        return 1.0 if score else 0.0
    if not isinstance(score, int | float) or not math.isfinite(score) or not 0 <= score <= 1:
        raise InvalidRequest("'score' must be a number from 0 to 1 (or true/false).", param="score")
    return float(score)


def _router_state(gw: Gateway) -> dict[str, Any]:
    """Which learned router routes: the shipped prior (calibrated on benchmark prompts, not on this traffic) or
    one adapted to this deployment's labels."""
    found = describe_router(gw.router.estimator)
    kind = found.get("kind")
    note = {
        "adapted": "adapted to this deployment's labels; thresholds calibrated on them",
        "prior": "the shipped prior: its operating points were calibrated on benchmark prompts, not on this "
        "deployment's traffic (the estimates above are the measure)",
    }.get(str(kind), "no learned router: heuristic difficulty")
    return {"kind": kind, "version": found.get("version"), "note": note}


@router.post("/v1/feedback")
async def post_feedback(request: Request) -> Response:
    """Feedback on one of the caller's own (or its team's) requests, stored beside it."""
    gw = gateway_of(request)
    ctx = context(request)
    await gw.admission.identify(ctx, fresh=True)  # a key revoked on another replica is refused at once
    await charge_request(gw.admission, ctx)  # one request of the key's RPM, as inference: 429 + retry-after
    body = load_json_object(await read_body(request, gw.settings.server.max_body_bytes))
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > 128:
        raise InvalidRequest("'request_id' is required (a string of at most 128 characters).", param="request_id")
    refuse_nul("request_id", request_id)
    score = _score(body)
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise InvalidRequest("'comment' must be a string.", param="comment")
    ledger = _ledger(request)
    admission = gw.admission
    keys_enabled = isinstance(admission, KeyAdmission) and admission.enabled
    await wait_recorded()
    found = None
    for attempt in range(2):  # a row another process recorded may still be in its queue: look once more
        if attempt:
            await asyncio.sleep(2 * ledger.settings.flush_interval_seconds)
        await _fresh(ledger)
        with database_errors():
            found = await add_feedback(
                ledger.db.engine,
                request_id,
                score,
                comment[:_MAX_COMMENT] if comment else None,
                key_id=ctx.key_id,
                team=ctx.team,
                keys_enabled=keys_enabled,
            )
        if found is not None:
            break
    if found is None:
        raise NotFound(f"No request '{request_id}' of this key.", param="request_id", code="request_not_found")
    return json_response(
        {"object": "feedback", "request_id": found.request_id, "score": found.score, "route": found.route,
         "model": found.model},
        status=201,
    )  # fmt: skip


@router.get("/admin/quality")
async def admin_quality(request: Request) -> Response:
    """Per route or model: the judged samples, the estimate against the reference, feedback and spend."""
    gw = gateway_of(request)
    await require_admin(request)
    group_by = request.query_params.get("group_by", "route")
    if group_by not in GROUP_BY:
        raise InvalidRequest(f"Invalid group_by '{group_by}': use one of {', '.join(GROUP_BY)}.", param="group_by")
    start, end = _range(request)
    ledger = _ledger(request)
    await _fresh(ledger)
    monitor = gw.monitor
    reference = dict(monitor.reference) if monitor is not None else {}
    with database_errors():
        data = await quality_report(
            ledger.db.engine,
            "route" if group_by == "route" else "model",
            reference=reference,
            start_ms=start,
            end_ms=end,
        )
        if monitor is not None:
            _, spent_today = await monitoring_spend_today(ledger.db.engine)  # every process's rows
    status: dict[str, Any] = {"enabled": monitor is not None}
    if monitor is not None:
        counted = None
        # Read only: a Redis that fails or does not answer gives no figures (rather than a slow page) and is not an
        # outage for this process's sampling.
        with contextlib.suppress(TimeoutError):
            counted = await asyncio.wait_for(monitor.spend.counted(), _COUNTED_TIMEOUT_S)
        status.update(
            sample_rates=monitor.rates,
            reference_models=reference,
            judge_model=monitor.settings.judge_model,
            daily_budget_usd=f"{monitor.spend.budget_usd:f}",
            spent_today_usd=f"{spent_today:f}",  # the deployment's (the ledger's), not this process's own
            budget_store="redis" if monitor.spend.shared else "process",
            budget_counted_usd=None if counted is None else f"{counted[0]:f}",
            budget_reserved_usd=None if counted is None else f"{counted[1]:f}",
            process_queued=monitor.queue.qsize(),
            process_in_progress=monitor.in_progress,
            queued=monitor.queue.qsize(),  # deprecated alias of process_queued (this process's queue)
        )
    return json_response(
        {
            "object": "quality",
            "group_by": group_by,
            "start": _iso(start),
            "end": _iso(end),
            "estimate_method": "(wins + ties) / samples, 95% Wilson interval; a route's figure counts the "
            "requests its reference answered as ties",
            "baseline_model": gw.settings.ledger.baseline_model,
            "router": _router_state(gw),
            "monitor": status,
            "data": data,
        }
    )
