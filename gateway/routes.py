"""HTTP routes: thin. Read the request, hand it to the pipeline, render what comes back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from gateway.auth.admission import KeyAdmission
from gateway.context import Endpoint
from gateway.errors import GatewayError, InvalidRequest, NotFound, PayloadTooLarge
from gateway.pipeline import JSONResult, Result
from gateway.routing import explain

if TYPE_CHECKING:
    from gateway.app import Gateway

router = APIRouter()
_STARTED = int(time.time())


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise InvalidRequest("Invalid Content-Length header.") from None
        if too_big:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def render(result: Result) -> Response:
    """A pipeline result as an HTTP response."""
    if isinstance(result, JSONResult):
        return _json(result.body, result.status, result.headers)
    headers = {**result.headers, "cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(result.frames, media_type="text/event-stream", headers=headers)


async def _handle(request: Request, endpoint: Endpoint) -> Response:
    gw = _gw(request)
    pipeline = gw.pipeline
    ctx = pipeline.new_context(endpoint, {k.lower(): v for k, v in request.headers.items()})
    try:
        await _authenticate(gw, ctx.api_key)  # before the body is even read
        raw = await read_body(request, gw.settings.server.max_body_bytes)
    except GatewayError as err:
        await pipeline.fail(ctx, err)
        raise
    try:
        result = await _unless_disconnected(request, pipeline.run(ctx, raw))
    except GatewayError as err:
        from gateway.app import error_response

        return error_response(err, {"x-request-id": ctx.request_id})
    if result is None:  # nobody is listening any more; the pipeline recorded the request as 499
        return Response(status_code=499)
    return render(result)


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, Result]) -> Result | None:
    """Run ``work`` (the stages before the first byte); if the client disconnects first, cancel it, which
    cancels the upstream call, and return None. Once streaming, the response itself watches the client."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watch.cancel()
        raise
    if task.done():
        watch.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, GatewayError):
        await task
    return None


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions (streaming or not)."""
    return await _handle(request, "chat")


async def completions(request: Request) -> Response:
    """OpenAI legacy completions (streaming or not)."""
    return await _handle(request, "completions")


async def embeddings(request: Request) -> Response:
    """Embeddings, for models configured with ``mode: embedding``."""
    return await _handle(request, "embeddings")


#: The inference endpoints are plain Starlette routes: FastAPI's per-request dependency solving buys
#: nothing for a handler that reads raw bytes, and these are the hot path. Their request schemas are
#: added to the OpenAPI document by ``gateway.app``.
HOT_ROUTES: list[tuple[str, Callable[[Request], Awaitable[Response]]]] = [
    ("/v1/chat/completions", chat_completions),
    ("/v1/completions", completions),
    ("/v1/embeddings", embeddings),
]


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


async def _authenticate(gw: Gateway, api_key: str | None) -> None:
    """With virtual keys on, every ``/v1`` endpoint needs a valid key (checked before any other work).

    Raises:
        Unauthorized: no key, an unknown key or a revoked one.
    """
    admission = gw.admission
    if isinstance(admission, KeyAdmission) and admission.enabled:
        await admission.identify(api_key)


async def _require_key(request: Request) -> None:
    auth = request.headers.get("authorization", "")
    await _authenticate(_gw(request), auth[7:].strip() or None if auth[:7].lower() == "bearer " else None)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """The gateway's model names and route names."""
    await _require_key(request)
    gw = _gw(request)
    data = [e for n in gw.router.names() if (e := _model_entry(gw, n)) is not None]
    return _json({"object": "list", "data": data})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    """One model or route."""
    await _require_key(request)
    entry = _model_entry(_gw(request), model_id)
    if entry is None:
        raise NotFound(f"The model '{model_id}' does not exist.", param="model")
    return _json(entry)


@router.get("/health")
async def health() -> Response:
    """The process is alive."""
    return _json({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    """Which backends answer; 200 when at least one does, else 503."""
    gw = _gw(request)
    names = list(gw.backends)
    results = await asyncio.gather(*(gw.backends[n].check_health() for n in names))
    detail = {
        n: {
            "ready": ok,
            "breaker": gw.breakers[n].state.value,
            "error": None if ok else gw.backends[n].stats.last_error,
        }
        for n, ok in zip(names, results, strict=True)
    }
    status = 200 if any(results) else 503
    return _json({"status": "ready" if status == 200 else "unavailable", "backends": detail}, status)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    gw = _gw(request)
    m = gw.metrics
    for name, backend in gw.backends.items():
        m.in_flight.labels(name).set(backend.stats.in_flight)
        m.queue_waiting.labels(name).set(backend.stats.queue.waiting)
        m.breaker_open.labels(name).set(0 if gw.breakers[name].available() else 1)
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.post("/admin/route/explain")
async def route_explain(request: Request) -> Response:
    """The routing decision for a request body, with each candidate's predictions; calls no backend."""
    gw = _gw(request)
    pipeline = gw.pipeline
    ctx = pipeline.new_context("chat", {k.lower(): v for k, v in request.headers.items()})
    ctx.extra["client_host"] = request.client.host if request.client else None
    await gw.admission.authorize_admin(ctx)
    raw = await read_body(request, gw.settings.server.max_body_bytes)
    return _json(explain_body(gw, ctx, raw))


def explain_body(gw: Gateway, ctx: Any, raw: bytes) -> dict[str, Any]:
    """Parse ``raw`` as a chat request and explain its routing."""
    from gateway.features import extract_features

    pipeline = gw.pipeline
    pipeline.parse(ctx, raw)
    feats = extract_features(ctx.endpoint, ctx.body, pipeline.counter)
    plan = gw.router.plan(ctx.requested_model, feats, ctx.constraints)
    out = explain(plan)
    out["prompt_tokens"] = feats.prompt_tokens
    return out
