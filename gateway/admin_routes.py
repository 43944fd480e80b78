"""Spend API, key administration and the cost dashboard.

* ``GET /admin/spend?group_by=model|key|team|user|route|day&start=&end=[&key_id=]`` (master key)
* ``GET /v1/spend?group_by=...&start=&end=``: the calling key's own spend only
* ``GET /admin/dashboard/data?start=&end=``: everything the dashboard draws (master key)
* ``GET /admin/requests?key_id=&limit=&before=``, ``GET /admin/requests/{request_id}``: raw ledger rows
  (drill-down, master key)
* ``GET|POST /admin/keys``, ``POST /admin/keys/{id}/revoke`` (master key)
* ``GET /admin/router``, ``POST /admin/router/reload``: the learned router serving, and reloading
  ``router.artifact`` without a restart (master key)
* ``GET /dashboard``: the dashboard page (its data calls carry the master key)

Times (``start``/``end``) are ``24h``/``7d`` ago, ISO dates or datetimes (UTC) or epoch seconds; money is
rendered as decimal strings.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from gateway.accounting import SqlLedger
from gateway.accounting import queries as q
from gateway.auth.admission import MASTER_KEY_ID, KeyAdmission, ServiceUnavailable
from gateway.errors import InvalidRequest, NotFound, Unauthorized
from gateway.routes import context, gateway_of, json_response, read_body
from gateway.runtime import describe_router, reload_router

router = APIRouter()

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_STATIC = {
    "chart.umd.js": "text/javascript",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
_FLUSH_BEFORE_QUERY_S = 2.0
_MAX_INT = 2**31 - 1  # PostgreSQL INTEGER (rpm, tpm)
_MAX_BUDGET_USD = Decimal(9_000_000)  # SQLite stores money as int64 units of 1e-12 USD (~9.2 million)


async def _admin(request: Request) -> None:
    await gateway_of(request).admission.authorize_admin(context(request))


def _ledger(request: Request) -> SqlLedger:
    recorder = gateway_of(request).recorder
    if not isinstance(recorder, SqlLedger):
        raise NotFound("No ledger database is configured.", code="ledger_not_configured")
    return recorder


def _keys(request: Request) -> KeyAdmission:
    admission = gateway_of(request).admission
    if not isinstance(admission, KeyAdmission):
        raise NotFound("Virtual keys are not configured.", code="keys_not_configured")
    return admission


async def _fresh(ledger: SqlLedger) -> None:
    """Write what this process has queued, so a query sees its own recent requests."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ledger.flush(), _FLUSH_BEFORE_QUERY_S)


def _range(request: Request) -> tuple[int | None, int | None]:
    params = request.query_params
    try:
        return q.parse_time(params.get("start")), q.parse_time(params.get("end"))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="start") from None


def _group_by(request: Request) -> str:
    group_by = request.query_params.get("group_by", "model")
    if group_by not in q.GROUPS:
        raise InvalidRequest(f"Invalid group_by '{group_by}': use one of {', '.join(q.GROUPS)}.", param="group_by")
    return group_by


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


async def _spend_body(
    ledger: SqlLedger, group_by: str, start: int | None, end: int | None, key_id: str | None
) -> dict[str, Any]:
    await _fresh(ledger)
    try:
        rows = await q.spend(ledger.db.engine, group_by, start_ms=start, end_ms=end, key_id=key_id)
        total = await q.totals(ledger.db.engine, start_ms=start, end_ms=end, key_id=key_id)
    except (SQLAlchemyError, OSError):
        raise ServiceUnavailable("The ledger database is unreachable; try again shortly.") from None
    return {
        "object": "spend",
        "group_by": group_by,
        "start": _iso(start),
        "end": _iso(end),
        "key_id": key_id,
        "data": [r.to_json() for r in rows],
        "totals": total.to_json(),
    }


@router.get("/admin/spend")
async def admin_spend(request: Request) -> Response:
    """Spend per group over a time range, for the master key."""
    await _admin(request)
    start, end = _range(request)
    body = await _spend_body(
        _ledger(request), _group_by(request), start, end, request.query_params.get("key_id") or None
    )
    return json_response(body)


@router.get("/v1/spend")
async def own_spend(request: Request) -> Response:
    """The calling key's own spend (the master key sees the requests it made itself)."""
    admission = _keys(request)
    ctx = context(request)  # the one header parse (a duplicated Authorization is a 400 first)
    if not admission.enabled:
        raise Unauthorized("Virtual keys are not enabled on this gateway (auth.enabled is false).")
    record, _ = await admission.lookup(ctx.api_key)
    key_id = MASTER_KEY_ID if record is None else record.id
    start, end = _range(request)
    body = await _spend_body(_ledger(request), _group_by(request), start, end, key_id)
    if record is not None:
        body["key"] = record.to_json()
        body["key"]["spent_usd"] = body["totals"]["cost_usd"]
    return json_response(body)


@router.get("/admin/dashboard/data")
async def dashboard_data(request: Request) -> Response:
    """Totals, time series, per-backend and top-N tables for the dashboard."""
    await _admin(request)
    ledger = _ledger(request)
    start, end = _range(request)
    await _fresh(ledger)
    try:
        body = await q.dashboard(
            ledger.db.engine, start_ms=start, end_ms=end, sample_rows=ledger.settings.latency_sample_rows
        )
    except (SQLAlchemyError, OSError):
        raise ServiceUnavailable("The ledger database is unreachable; try again shortly.") from None
    body["ledger"] = {"pending_rows": ledger.pending, "dropped_rows": ledger.dropped}
    body["baseline_model"] = gateway_of(request).settings.ledger.baseline_model
    return json_response(body)


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise InvalidRequest("Invalid limit: use an integer from 1 to 1000.", param="limit")
    return int(raw)


@router.get("/admin/requests")
async def recent_requests(request: Request) -> Response:
    """The newest ledger rows, of one key (``key_id``) or of all, before ``before`` (drill-down)."""
    await _admin(request)
    ledger = _ledger(request)
    limit = _limit(request)
    try:
        before = q.parse_time(request.query_params.get("before"))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="before") from None
    await _fresh(ledger)
    try:
        rows = await q.recent_requests(
            ledger.db.engine, key_id=request.query_params.get("key_id") or None, limit=limit, before_ms=before
        )
    except (SQLAlchemyError, OSError):
        raise ServiceUnavailable("The ledger database is unreachable; try again shortly.") from None
    return json_response({"object": "list", "data": rows})


@router.get("/admin/requests/{request_id}")
async def request_rows(request: Request, request_id: str) -> Response:
    """The ledger rows of one request id (404 if none, e.g. past retention)."""
    await _admin(request)
    ledger = _ledger(request)
    await _fresh(ledger)
    try:
        rows = await q.request_rows(ledger.db.engine, request_id)
    except (SQLAlchemyError, OSError):
        raise ServiceUnavailable("The ledger database is unreachable; try again shortly.") from None
    if not rows:
        raise NotFound(f"No ledger row for request '{request_id}'.", code="request_not_found")
    return json_response({"object": "list", "data": rows})


@router.get("/admin/router")
async def router_info(request: Request) -> Response:
    """The learned router serving now: kind (prior/adapted), version, training data, held-out figures."""
    await _admin(request)
    return json_response(describe_router(gateway_of(request).router.estimator))


@router.post("/admin/router/reload")
async def router_reload(request: Request) -> Response:
    """Load ``router.artifact`` again and swap it in without a restart (400 and no change if it does not load)."""
    await _admin(request)
    return json_response(await reload_router(gateway_of(request)))


@router.get("/admin/keys")
async def list_keys(request: Request) -> Response:
    """Every virtual key (never their secrets)."""
    await _admin(request)
    try:
        records = await _keys(request).store.list()
    except (SQLAlchemyError, OSError):
        raise ServiceUnavailable("The key database is unreachable; try again shortly.") from None
    return json_response({"object": "list", "data": [r.to_json() for r in records]})


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_INT:
        raise InvalidRequest(f"'{name}' must be an integer from 1 to {_MAX_INT}.", param=name)
    return value


@router.post("/admin/keys")
async def create_key(request: Request) -> Response:
    """Create a key: ``{"name", "team"?, "budget_usd"?, "rpm"?, "tpm"?}``; the secret is returned once."""
    await _admin(request)
    try:
        body = orjson.loads(await read_body(request, gateway_of(request).settings.server.max_body_bytes))
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"].strip():
        raise InvalidRequest("'name' is required.", param="name")
    budget: Decimal | None = None
    if body.get("budget_usd") is not None:
        try:
            budget = Decimal(str(body["budget_usd"]))
        except InvalidOperation:
            raise InvalidRequest("'budget_usd' must be a decimal number.", param="budget_usd") from None
        if not budget.is_finite() or budget < 0:
            raise InvalidRequest("'budget_usd' must be a non-negative number.", param="budget_usd")
        if budget > _MAX_BUDGET_USD:
            raise InvalidRequest(f"'budget_usd' must be at most {_MAX_BUDGET_USD}.", param="budget_usd")
    team = body.get("team")
    try:
        record, secret = await _keys(request).create_key(
            body["name"].strip()[:128],
            team=team[:128] if isinstance(team, str) and team else None,
            budget_usd=budget,
            rpm=_opt_int(body, "rpm"),
            tpm=_opt_int(body, "tpm"),
        )
    except (SQLAlchemyError, OSError):
        raise ServiceUnavailable("The key database is unreachable; try again shortly.") from None
    return json_response({**record.to_json(), "key": secret}, status=201)


@router.post("/admin/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request) -> Response:
    """Revoke a key: refused at once on every replica sharing Redis."""
    await _admin(request)
    try:
        record = await _keys(request).revoke_key(key_id)
    except (SQLAlchemyError, OSError):
        raise ServiceUnavailable("The key database is unreachable; try again shortly.") from None
    if record is None:
        raise NotFound(f"No key '{key_id}'.", code="key_not_found")
    return json_response(record.to_json())


@router.get("/dashboard")
async def dashboard_page() -> Response:
    """The dashboard page (a login form; its data needs the master key)."""
    return FileResponse(DASHBOARD_DIR / "index.html", media_type="text/html", headers={"cache-control": "no-cache"})


@router.get("/dashboard/static/{name}")
async def dashboard_static(name: str) -> Response:
    """The dashboard's script, style and charting library (shipped in the package: works offline)."""
    media_type = _STATIC.get(name)
    if media_type is None:
        raise NotFound(f"No dashboard file '{name}'.", code="not_found")
    return FileResponse(
        DASHBOARD_DIR / "static" / name, media_type=media_type, headers={"cache-control": "public, max-age=3600"}
    )
