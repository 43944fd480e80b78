"""HTTP routes other than inference (which is :mod:`gateway.inference`): models, health, metrics, explain."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.request_rate import charge_request
from gateway.context import RequestContext
from gateway.errors import GatewayError, NotFound
from gateway.http_limits import header_dict
from gateway.inference import read_asgi_body
from gateway.runtime import Gateway

router = APIRouter()
_STARTED = int(time.time())


def gateway_of(request: Request) -> Gateway:
    """The runtime of the app serving ``request``."""
    gw: Gateway = request.app.state.gateway
    return gw


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``body`` as a JSON response."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) without reading it all."""
    return await read_asgi_body(request.receive, request.headers, limit)


def _model_entry(gw: Gateway, name: str) -> dict[str, Any] | None:
    prep = gw.router.models.get(name)
    if prep is not None:
        spec = prep.spec
        return {
            "id": name,
            "object": "model",
            "created": _STARTED,
            "owned_by": spec.backend,
            "x_gateway": {
                "kind": "model",
                "mode": spec.mode,
                "backend": spec.backend,
                "context_window": prep.context_window,
                "quality": prep.quality,
                "supports_tools": prep.supports_tools,
            },
        }
    route = gw.router.routes.get(name)
    if route is not None:
        return {
            "id": name,
            "object": "model",
            "created": _STARTED,
            "owned_by": "gateway",
            "x_gateway": {"kind": "route", "policy": route.policy, "models": route.models},
        }
    return None


def context(request: Request) -> RequestContext:
    """A request context for a route other than inference (the caller's key)."""
    ctx = gateway_of(request).pipeline.new_context("chat", header_dict(request.scope["headers"]))
    return ctx


def peer_of(request: Request) -> str | None:
    """The client's address (a proxy's, behind one that uvicorn does not trust)."""
    return request.client.host if request.client else None


async def require_admin(request: Request) -> RequestContext:
    """The master key for this request (its peer's wrong keys counted: :mod:`gateway.auth.admin_guard`)."""
    ctx = context(request)
    await gateway_of(request).admission.authorize_admin(ctx, peer_of(request), request.url.path)
    return ctx


async def _require_key(request: Request) -> None:
    """With virtual keys on, the same check as every inference request's, and one of the key's requests a minute
    (a store round trip each)."""
    ctx = context(request)
    admission = gateway_of(request).admission
    await admission.identify(ctx, fresh=True)
    await charge_request(admission, ctx)


def _anthropic_model(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` as the Anthropic API's ``ModelInfo`` (what its SDK's ``models.list``/``retrieve`` parse)."""
    out = {
        "type": "model",
        "id": entry["id"],
        "display_name": entry["id"],
        "created_at": datetime.fromtimestamp(entry["created"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lifecycle": "active",
    }
    if entry["x_gateway"].get("context_window"):
        out["max_input_tokens"] = entry["x_gateway"]["context_window"]
    return out


def _anthropic(request: Request) -> bool:
    """The Anthropic SDK asks (it sends ``anthropic-version`` with every request): answer in Anthropic's shape."""
    return "anthropic-version" in request.headers


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """The gateway's model names and route names (Anthropic's shape for its SDK: chat models and routes)."""
    await _require_key(request)
    gw = gateway_of(request)
    data = [e for n in gw.router.names() if (e := _model_entry(gw, n)) is not None]
    if _anthropic(request):
        listed = [_anthropic_model(e) for e in data if e["x_gateway"].get("mode") != "embedding"]
        first, last = (listed[0]["id"], listed[-1]["id"]) if listed else (None, None)
        return json_response({"data": listed, "has_more": False, "first_id": first, "last_id": last})
    return json_response({"object": "list", "data": data})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    """One model or route."""
    await _require_key(request)
    entry = _model_entry(gateway_of(request), model_id)
    if entry is None:
        message = f"The model '{model_id}' does not exist."
        if _anthropic(request):
            error = {"type": "error", "error": {"type": "not_found_error", "message": message}}
            return json_response(error, status=404)
        raise NotFound(message, param="model")
    return json_response(_anthropic_model(entry) if _anthropic(request) else entry)


@router.get("/health")
async def health() -> Response:
    """The process is alive."""
    return json_response({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    """200 when a backend is up (by the last background check and its breaker), else 503; per-backend
    detail only for the master key. Probes nothing itself."""
    gw = gateway_of(request)
    try:  # an optional detail: a wrong key here is not counted as a guess (no peer)
        await gw.admission.authorize_admin(context(request))
        detail = True
    except GatewayError:
        detail = False
    status, body = await gw.readiness.snapshot(detail=detail)
    return json_response(body, status)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus metrics (the master key required with ``server.metrics_require_key``)."""
    gw = gateway_of(request)
    if gw.settings.server.metrics_require_key:
        await require_admin(request)
    m = gw.metrics
    for name, backend in gw.backends.items():
        m.in_flight.labels(name).set(backend.stats.in_flight)
        m.queue_waiting.labels(name).set(backend.stats.queue.waiting)
        m.breaker_open.labels(name).set(0 if gw.breakers[name].available() else 1)
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.post("/admin/route/explain")
async def route_explain(request: Request) -> Response:
    """The routing decision for a request body, with each candidate's predictions; calls no backend."""
    gw = gateway_of(request)
    ctx = await require_admin(request)
    raw = await read_body(request, gw.settings.server.max_body_bytes)
    return json_response(await gw.pipeline.explain(ctx, raw))
