"""``create_app(settings)``: builds the FastAPI app; everything stateful is built in its lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends import Backend, CircuitBreaker, build_backend, build_session
from gateway import components
from gateway.admin_routes import router as admin_router
from gateway.config import Settings, load_settings
from gateway.errors import GatewayError
from gateway.hooks import Admission, Recorder, ResponseCache
from gateway.http_limits import HeaderLimit
from gateway.inference import HOT_PATHS, InferenceRoute, handle
from gateway.logs import tune_stdlib_logging
from gateway.metrics import Metrics
from gateway.openapi import install_openapi
from gateway.pipeline import Pipeline, drain_background
from gateway.pricing import load_price_entries
from gateway.routes import router as api_router
from gateway.routing import COMPILED, QualityEstimator, Router
from gateway.tokens import TiktokenCounter, TokenCounter, load_counter

log = logging.getLogger("gateway.app")


@dataclass(slots=True)
class Gateway:
    """Everything one app instance owns; reachable from routes as ``request.app.state.gateway``."""

    settings: Settings
    http: aiohttp.ClientSession
    backends: dict[str, Backend]
    breakers: dict[str, CircuitBreaker]
    router: Router
    pipeline: Pipeline
    metrics: Metrics
    cache: ResponseCache
    recorder: Recorder
    admission: Admission


def load_estimator(counter: TokenCounter) -> QualityEstimator | None:
    """The shipped learned quality router, if its artifact loads (it reads the ``cl100k_base`` token ids
    that ``counter`` computes for every prompt, and encodes with it when called without them)."""
    if not isinstance(counter, TiktokenCounter) or counter.encoding_name != "cl100k_base":
        log.warning("learned quality router needs the cl100k_base tokenizer; using the heuristic difficulty")
        return None
    try:
        from policies.router.model import QualityRouter
    except ImportError:
        return None
    try:
        estimator: QualityEstimator = QualityRouter.load(encode=counter.encode)
        return estimator
    except (OSError, ValueError, KeyError) as exc:
        log.warning("learned quality router unavailable (%s); using the heuristic difficulty", exc)
        return None


async def build_gateway(settings: Settings) -> Gateway:
    """Build the whole runtime for ``settings`` (the caller closes it with :func:`close_gateway`)."""
    # First, before long-lived objects interleave with it: the price map is read and freed here.
    load_price_entries([m.upstream_name for m in settings.models] + [settings.ledger.baseline_model])
    counter = load_counter()  # its temporary 16 MiB of BPE ranks, too
    server = settings.server
    http = build_session(
        max_connections=server.upstream_max_connections, keepalive_seconds=server.upstream_keepalive_seconds
    )
    backends: dict[str, Backend] = {
        spec.name: build_backend(spec, http, scrape_seconds=settings.server.metrics_scrape_seconds)
        for spec in settings.models
    }
    breakers = {
        name: CircuitBreaker(settings.breaker.failure_threshold, settings.breaker.reset_seconds) for name in backends
    }
    router = Router(settings, backends, breakers, load_estimator(counter))
    log.info("decide stage: %s", "compiled (mypyc)" if COMPILED else "pure Python (see setup.py)")
    metrics = Metrics()
    cache = await components.build_cache(settings, metrics)
    recorder = await components.build_recorder(settings, metrics)
    admission = await components.build_admission(settings, recorder)
    pipeline = Pipeline(
        settings=settings,
        backends=backends,
        breakers=breakers,
        router=router,
        counter=counter,
        metrics=metrics,
        admission=admission,
        cache=cache,
        recorder=recorder,
    )
    for backend in backends.values():
        await backend.start()
    return Gateway(settings, http, backends, breakers, router, pipeline, metrics, cache, recorder, admission)


async def close_gateway(gw: Gateway) -> None:
    """Stop background work, flush the cache and the ledger, close connections."""
    await drain_background()
    for backend in gw.backends.values():
        await backend.aclose()
    await gw.cache.aclose()
    await gw.recorder.aclose()
    await gw.http.close()


def error_response(err: GatewayError, extra_headers: dict[str, str] | None = None) -> Response:
    """Render a gateway error in the OpenAI shape."""
    headers = {**err.headers, **(extra_headers or {})}
    return Response(orjson.dumps(err.to_body()), status_code=err.status, media_type="application/json", headers=headers)


def _plain_error(status: int, message: str, error_type: str, code: str | None = None) -> Response:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class GatewayApp(FastAPI):
    """The FastAPI app, with the inference endpoints answered before its middleware stack.

    Every request but ``POST`` to one of :data:`gateway.inference.HOT_PATHS` goes through FastAPI as
    usual; those go straight to :func:`gateway.inference.handle`, which does what the stack would do for
    them (header limit, error rendering) at a fraction of the cost per request.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not self.root_path:
            endpoint = HOT_PATHS.get(scope["path"])
            if endpoint is not None:
                gw: Gateway | None = getattr(self.state, "gateway", None)
                if gw is not None:
                    await handle(gw, endpoint, scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, freeze_gc: bool = False) -> FastAPI:
    """The gateway's ASGI app for ``settings``; ``freeze_gc`` (the server process) moves everything built at
    start-up out of the garbage collector's reach."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = await build_gateway(settings)
        app.state.gateway = gw
        if freeze_gc:
            # Everything built so far lives as long as the process: keep it out of the cyclic
            # collector's scans, which otherwise walk these ~100k objects over and over under load.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await close_gateway(gw)

    app = GatewayApp(
        title="LLM hybrid gateway",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    for path, endpoint in HOT_PATHS.items():
        app.router.routes.append(Route(path, InferenceRoute(endpoint), methods=["POST"], include_in_schema=False))
    app.include_router(api_router)
    app.include_router(admin_router)

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _plain_error(exc.status_code, message, kind, str(exc.status_code))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _plain_error(500, "The gateway hit an internal error; it has been logged.", "internal_error")

    app.add_middleware(HeaderLimit, max_header_bytes=settings.server.max_header_bytes)
    install_openapi(app)
    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker serving: reads ``GATEWAY_CONFIG``."""
    tune_stdlib_logging()  # each worker process serves; tests building apps keep logging as it is
    path = os.environ.get("GATEWAY_CONFIG", "gateway.yaml")
    return create_app(load_settings(path), freeze_gc=True)


def settings_summary(settings: Settings) -> dict[str, Any]:
    """A short description of what was configured, for start-up logs."""
    return {
        "models": [m.name for m in settings.models],
        "routes": sorted(settings.resolved_routes()),
        "cache": "redis" if settings.cache.redis_url else ("memory" if settings.cache.enabled else "off"),
        "ledger": settings.ledger.url.split("://", 1)[0],
        "auth": settings.auth.enabled,
    }
