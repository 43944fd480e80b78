"""Spend API, key administration and the cost dashboard.

* ``GET /admin/spend?group_by=model|key|team|user|route|day&start=&end=[&key_id=][&limit=]`` (master key)
* ``GET /v1/spend?group_by=...&start=&end=[&limit=]``: the calling key's own spend only
* ``GET /admin/dashboard/data?start=&end=``: everything the dashboard draws (master key)
* ``GET /admin/requests?key_id=&limit=&before=``, ``GET /admin/requests/{request_id}``: raw ledger rows
  (drill-down, master key)
* ``GET|POST /admin/keys``, ``POST /admin/keys/{id}/revoke`` (master key)
* ``GET /admin/router``, ``POST /admin/router/reload``: the learned router this process serves (which save,
  since when), and reloading ``router.artifact`` here at once without a restart; every other process follows the
  artifact on disk within ``router.watch_seconds`` (master key)
* ``GET /dashboard``: the dashboard page (its data calls carry the master key)

Times (``start``/``end``) are ``24h``/``7d`` ago, ISO dates or datetimes (UTC) or epoch seconds; money is
rendered as decimal strings. A spend answer lists at most ``limit`` groups (default 100, at most 1000: the most
expensive, or the newest days) and says ``truncated`` when it left some out; its ``totals`` cover them all.
Ids and names holding a NUL character are refused (400) on both databases (PostgreSQL cannot store one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from gateway.accounting import SqlLedger
from gateway.accounting import queries as q
from gateway.auth.admission import MASTER_KEY_ID, KeyAdmission, ServiceUnavailable
from gateway.auth.keys import InvalidKeyField
from gateway.auth.request_rate import charge_request
from gateway.errors import InvalidRequest, NotFound, Unauthorized
from gateway.routes import context, gateway_of, json_response, peer_of, read_body, require_admin
from gateway.runtime import reload_router, router_status

router = APIRouter()
log = logging.getLogger("gateway.admin")

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_STATIC = {
    "chart.umd.js": "text/javascript",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
_FLUSH_BEFORE_QUERY_S = 2.0
_MAX_LIMIT = 1000  # rows (drill-down) or groups (spend) one answer may list
_COUNT_DIGITS = 7  # more ASCII digits than any allowed count has (int() refuses past 4300 of them)
#: SQLSTATE classes of a database that cannot serve now: connection exception, insufficient resources (too many
#: connections), operator intervention (shutting down, starting up).
_UNREACHABLE_SQLSTATES = ("08", "53", "57")


def unreachable(exc: BaseException) -> bool:
    """Whether a database error means the database cannot be reached or cannot serve now (a connection or
    operational failure, worth retrying), rather than a statement it refused (a bug, or data it cannot hold)."""
    if isinstance(exc, OSError | OperationalError | InterfaceError | DisconnectionError | PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    return exc.connection_invalidated or (isinstance(state, str) and state[:2] in _UNREACHABLE_SQLSTATES)


@contextlib.contextmanager
def database_errors(what: str = "ledger") -> Iterator[None]:
    """Answer 503 when the ``what`` database cannot be reached (see :func:`unreachable`); any other database
    error propagates (a 500, logged): a refused statement is no outage."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        if not unreachable(exc):
            raise
        raise ServiceUnavailable(f"The {what} database is unreachable; try again shortly.") from None


def refuse_nul(param: str, value: str | None) -> None:
    """Refuse (400, naming ``param``) an id or name holding a NUL character: PostgreSQL cannot store or compare
    one (SQLite can), so both databases answer alike."""
    if value is not None and "\x00" in value:
        raise InvalidRequest(f"'{param}' must not contain a NUL character.", param=param)


async def _admin(request: Request) -> None:
    await require_admin(request)


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


def time_param(request: Request, name: str) -> int | None:
    """The query parameter ``name`` as epoch milliseconds (None when absent); 400 naming it when it is no time."""
    try:
        return q.parse_time(request.query_params.get(name))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=name) from None


def _range(request: Request) -> tuple[int | None, int | None]:
    return time_param(request, "start"), time_param(request, "end")


def count_param(request: Request, name: str, default: int, maximum: int = _MAX_LIMIT) -> int:
    """The query parameter ``name`` as a count from 1 to ``maximum`` in ASCII digits; 400 naming it otherwise
    (``str.isdigit`` alone passes superscripts, which ``int`` refuses, and ``int`` takes other scripts' digits)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _COUNT_DIGITS or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(f"Invalid {name}: use an integer from 1 to {maximum}.", param=name)
    return int(raw)


def _key_id(request: Request) -> str | None:
    key_id = request.query_params.get("key_id") or None
    refuse_nul("key_id", key_id)
    return key_id


def _group_by(request: Request) -> str:
    group_by = request.query_params.get("group_by", "model")
    if group_by not in q.GROUPS:
        raise InvalidRequest(f"Invalid group_by '{group_by}': use one of {', '.join(q.GROUPS)}.", param="group_by")
    return group_by


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


async def _spend_body(request: Request, ledger: SqlLedger, key_id: str | None) -> dict[str, Any]:
    """The spend answer: validates ``group_by``, ``start``/``end`` and ``limit``, then reads the groups."""
    group_by = _group_by(request)
    start, end = _range(request)
    limit = count_param(request, "limit", 100)
    await _fresh(ledger)
    with database_errors():
        rows, truncated = await q.spend_page(
            ledger.db.engine, group_by, start_ms=start, end_ms=end, key_id=key_id, limit=limit
        )
        # every group listed: the totals are theirs, from the same statement (a second one saw rows another writer
        # committed meanwhile, and the answer did not add up to itself)
        if truncated:
            total = await q.totals(ledger.db.engine, start_ms=start, end_ms=end, key_id=key_id)
        else:
            total = q.summed(rows)
    return {
        "object": "spend",
        "group_by": group_by,
        "start": _iso(start),
        "end": _iso(end),
        "key_id": key_id,
        "limit": limit,
        "truncated": truncated,
        "data": [r.to_json() for r in rows],
        "totals": total.to_json(),
    }


@router.get("/admin/spend")
async def admin_spend(request: Request) -> Response:
    """Spend per group over a time range, for the master key."""
    await _admin(request)
    key_id = _key_id(request)
    return json_response(await _spend_body(request, _ledger(request), key_id))


@router.get("/v1/spend")
async def own_spend(request: Request) -> Response:
    """The calling key's own spend (the master key sees the requests it made itself)."""
    admission = _keys(request)
    ctx = context(request)  # the one header parse (a duplicated Authorization is a 400 first)
    if not admission.enabled:
        raise Unauthorized("Virtual keys are not enabled on this gateway (auth.enabled is false).")
    await admission.identify(ctx, fresh=True)
    await charge_request(admission, ctx)  # one of the key's requests per minute: each flushes and reads the ledger
    record, _ = await admission.lookup(ctx.api_key)  # as identify just read it
    key_id = MASTER_KEY_ID if record is None else record.id
    body = await _spend_body(request, _ledger(request), key_id)
    if record is not None:
        body["key"] = record.to_json()
        # what the budget is measured against: the key's whole spend, not the range's (a range of the last
        # minute showed $0 beside the budget of a key that was nearly out of it)
        with database_errors():
            body["key"]["spent_usd"] = f"{await admission.store.spent(record.id):f}"
    return json_response(body)


@router.get("/admin/dashboard/data")
async def dashboard_data(request: Request) -> Response:
    """Totals, time series, per-backend and top-N tables for the dashboard."""
    await _admin(request)
    ledger = _ledger(request)
    start, end = _range(request)
    await _fresh(ledger)
    with database_errors():
        body = await q.dashboard(
            ledger.db.engine,
            start_ms=start,
            end_ms=end,
            sample_rows=ledger.settings.latency_sample_rows,
            retention_days=ledger.settings.retention_days,
        )
    body["ledger"] = {"pending_rows": ledger.pending, "dropped_rows": ledger.dropped}
    body["baseline_model"] = gateway_of(request).settings.ledger.baseline_model
    return json_response(body)


@router.get("/admin/requests")
async def recent_requests(request: Request) -> Response:
    """The newest ledger rows, of one key (``key_id``) or of all, before ``before`` (a time) and after the row
    ``before_id`` (the previous page's ``last_id``) (drill-down)."""
    await _admin(request)
    ledger = _ledger(request)
    key_id = _key_id(request)
    limit = count_param(request, "limit", 50)
    before = time_param(request, "before")
    raw_id = request.query_params.get("before_id")
    if raw_id is not None and not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 18):
        raise InvalidRequest("Invalid before_id: use a row id (the previous page's last_id).", param="before_id")
    before_id = int(raw_id) if raw_id is not None else None
    await _fresh(ledger)
    with database_errors():
        rows = await q.recent_requests(
            ledger.db.engine, key_id=key_id, limit=limit, before_ms=before, before_id=before_id
        )
    # the next page: before_id=last_id (every row once, however many share a millisecond)
    last_id = rows[-1]["id"] if rows else None
    return json_response({"object": "list", "data": rows, "last_id": last_id, "has_more": len(rows) == limit})


@router.get("/admin/requests/{request_id:path}")  # a client's x-request-id may hold a '/'
async def request_rows(request: Request, request_id: str) -> Response:
    """The ledger rows of one request id (404 if none, e.g. past retention)."""
    await _admin(request)
    refuse_nul("request_id", request_id)
    ledger = _ledger(request)
    await _fresh(ledger)
    with database_errors():
        rows = await q.request_rows(ledger.db.engine, request_id)
    if not rows:
        raise NotFound(f"No ledger row for request '{request_id}'.", code="request_not_found")
    return json_response({"object": "list", "data": rows})


@router.get("/admin/router")
async def router_info(request: Request) -> Response:
    """The learned router this process serves now: kind (prior/adapted), version, artifact id, training data,
    held-out figures, the process's id, when and how it loaded it, and its watch of ``router.artifact``."""
    await _admin(request)
    return json_response(router_status(gateway_of(request)))


@router.post("/admin/router/reload")
async def router_reload(request: Request) -> Response:
    """Load ``router.artifact`` again and swap it in without a restart, in the process that got the call (400 and
    no change if it does not load); the answer says how the other processes (workers, replicas) follow it."""
    await _admin(request)
    gw = gateway_of(request)
    answer = await reload_router(gw)
    log.info("admin: router reloaded from %s", peer_of(request) or "-")
    every = gw.settings.router.watch_seconds
    answer["other_processes"] = (
        f"every other gateway process serving {gw.settings.router.artifact} loads it within {every:g} s "
        "(router.watch_seconds); GET /admin/router shows each one's artifact_id"
        if every > 0
        else "router.watch_seconds is 0: the other processes (workers, replicas) keep their router until each gets "
        "this call or restarts"
    )
    answer["other_processes_within_s"] = every if every > 0 else None
    return json_response(answer)


@router.get("/admin/keys")
async def list_keys(request: Request) -> Response:
    """Every virtual key (never their secrets)."""
    await _admin(request)
    with database_errors("key"):
        records = await _keys(request).store.list()
    return json_response({"object": "list", "data": [r.to_json() for r in records]})


@router.post("/admin/keys")
async def create_key(request: Request) -> Response:
    """Create a key: ``{"name", "team"?, "budget_usd"?, "rpm"?, "tpm"?}``; the secret is returned once."""
    await _admin(request)
    try:
        body = orjson.loads(await read_body(request, gateway_of(request).settings.server.max_body_bytes))
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict) or body.get("name") is None:
        raise InvalidRequest("'name' is required.", param="name")
    budget: Decimal | None = None
    if body.get("budget_usd") is not None:
        try:
            budget = q.parse_budget(str(body["budget_usd"]))
        except ValueError as exc:
            raise InvalidRequest(f"'budget_usd' {exc}.", param="budget_usd") from None
    try:
        with database_errors("key"):
            record, secret = await _keys(request).create_key(
                body["name"], team=body.get("team"), budget_usd=budget, rpm=body.get("rpm"), tpm=body.get("tpm")
            )
    except InvalidKeyField as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None
    log.info("admin: key %s created (team %s) from %s", record.id, record.team or "-", peer_of(request) or "-")
    return json_response({**record.to_json(), "key": secret}, status=201)


@router.post("/admin/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request) -> Response:
    """Revoke a key: refused at once on every replica sharing Redis."""
    await _admin(request)
    refuse_nul("key_id", key_id)
    with database_errors("key"):
        record = await _keys(request).revoke_key(key_id)
    if record is None:
        raise NotFound(f"No key '{key_id}'.", code="key_not_found")
    log.info("admin: key %s revoked from %s", record.id, peer_of(request) or "-")
    return json_response(record.to_json())


#: The dashboard's pages hold the master key (sessionStorage): scripts only from the gateway itself, no framing by
#: another site (clickjacking), no guessing of content types, no address of the dashboard sent elsewhere.
#: Styles may be inline: Chart.js sizes its canvases with them.
_PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@router.get("/dashboard")
async def dashboard_page() -> Response:
    """The dashboard page (a login form; its data needs the master key)."""
    return FileResponse(
        DASHBOARD_DIR / "index.html", media_type="text/html", headers={"cache-control": "no-cache", **_PAGE_HEADERS}
    )


@router.get("/dashboard/static/{name}")
async def dashboard_static(name: str) -> Response:
    """The dashboard's script, style and charting library (shipped in the package: works offline)."""
    media_type = _STATIC.get(name)
    if media_type is None:
        raise NotFound(f"No dashboard file '{name}'.", code="not_found")
    return FileResponse(
        DASHBOARD_DIR / "static" / name,
        media_type=media_type,
        headers={"cache-control": "public, max-age=3600", **_PAGE_HEADERS},
    )
