"""``create_app(settings)``: builds the FastAPI app; everything stateful is built in its lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from uvicorn.config import STARTUP_FAILURE

from gateway.accounting.migrate import SchemaTooNew
from gateway.admin_routes import router as admin_router
from gateway.config import CONFIG_TEXT_ENV, Settings, load_settings
from gateway.errors import ConfigError, GatewayError
from gateway.frontdoor_routes import router as frontdoor_router
from gateway.http_limits import HeaderLimit
from gateway.inference import FRONT_DOORS, HOT_PATHS, FrontDoorRoute, InferenceRoute, handle
from gateway.logs import stop_background_writers, tune_stdlib_logging
from gateway.openapi import install_openapi
from gateway.quality_routes import router as quality_router
from gateway.routes import router as api_router
from gateway.runtime import Gateway, build_gateway, close_gateway, start_router_watch, stop_router_watch
from gateway.server import follow_supervisor

log = logging.getLogger("gateway.app")


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
    them (header limit, error rendering) at a fraction of the cost per request. With ``server.cors_origins`` set,
    a request from a browser (one with an ``Origin`` header) takes the stack, where the CORS middleware is.
    """

    #: ``server.cors_origins`` is set: requests with an ``Origin`` header go through the CORS middleware.
    cors = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not self.root_path
            and not (self.cors and any(name == b"origin" for name, _ in scope["headers"]))
        ):
            endpoint = HOT_PATHS.get(scope["path"])
            if endpoint is not None:
                gw: Gateway | None = getattr(self.state, "gateway", None)
                if gw is not None:
                    await handle(gw, endpoint, scope, receive, send)
                    return
            elif (door := FRONT_DOORS.get(scope["path"])) is not None:
                gw = getattr(self.state, "gateway", None)
                if gw is not None:
                    await handle(gw, "chat", scope, receive, send, door(gw))
                    return
        await super().__call__(scope, receive, send)


#: The response headers a browser's script may read (CORS hides all but a few by default).
EXPOSED_HEADERS = [
    "x-request-id",
    "x-gateway-model",
    "x-gateway-policy",
    "x-gateway-route",
    "x-gateway-reason",
    "x-gateway-cost-usd",
    "x-gateway-cost-estimated",
    "x-gateway-cache",
    "x-gateway-cache-score",
    "x-gateway-cache-ttl",
    "x-gateway-cascade",
    "x-gateway-cascade-reason",
    "x-gateway-cascade-attempts",
    "retry-after",
]


#: What an operator got wrong that start-up finds (a router artifact that does not load, a ledger that cannot hold
#: the ledger or from a newer gateway, a directory that cannot be made): one line, not a traceback.
_START_MISTAKES = (ConfigError, SchemaTooNew, OSError)


def create_app(settings: Settings, *, freeze_gc: bool = False) -> FastAPI:
    """The gateway's ASGI app for ``settings``; ``freeze_gc`` (the server process) moves everything built at
    start-up out of the garbage collector's reach, and ends the process on an operator's mistake at start-up
    (one ``error`` line, exit code 3) rather than log a traceback."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            gw = await build_gateway(settings)
        except _START_MISTAKES as exc:
            if not freeze_gc:  # an app a test or an embedding program built: its caller sees the exception
                raise
            # Raised from here, uvicorn logs the whole traceback (twice with workers), then the aiohttp session's
            # "Unclosed client session": an operator reads a crash where one line says what to fix.
            log.error("cannot start: %s", str(exc) or type(exc).__name__)
            stop_background_writers()
            logging.shutdown()
            os._exit(STARTUP_FAILURE)
        app.state.gateway = gw
        if freeze_gc:
            # Everything built so far lives as long as the process: keep it out of the cyclic
            # collector's scans, which otherwise walk these ~100k objects over and over under load.
            gc.collect()
            gc.freeze()
        # Every process follows router.artifact on disk (router.watch_seconds): a reload or a new save reaches
        # every worker and replica, not only the one that got POST /admin/router/reload.
        start_router_watch(gw)
        follow_supervisor()
        try:
            yield
        finally:
            await stop_router_watch(gw)
            await close_gateway(gw)
            # uvicorn's last lines follow, then it raises the signal it got again: they must not wait in a queue
            stop_background_writers()

    app = GatewayApp(
        title="LLM hybrid gateway",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    for path, endpoint in HOT_PATHS.items():
        app.router.routes.append(Route(path, InferenceRoute(endpoint), methods=["POST"], include_in_schema=False))
    for path in FRONT_DOORS:
        app.router.routes.append(Route(path, FrontDoorRoute(path), methods=["POST"], include_in_schema=False))
    app.include_router(api_router)
    app.include_router(admin_router)
    app.include_router(quality_router)
    app.include_router(frontdoor_router)

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

    app.add_middleware(
        HeaderLimit,
        max_header_bytes=settings.server.max_header_bytes,
        recorded=frozenset(HOT_PATHS) | frozenset(FRONT_DOORS),
    )
    if settings.server.cors_origins:
        app.cors = True
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],  # the SDKs send their own (x-stainless-*, anthropic-version, x-api-key)
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    install_openapi(app)
    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker serving: reads ``GATEWAY_CONFIG``."""
    tune_stdlib_logging()  # each worker process serves; tests building apps keep logging as it is
    path = os.environ.get("GATEWAY_CONFIG", "gateway.yaml")
    return create_app(load_settings(path, os.environ.get(CONFIG_TEXT_ENV)), freeze_gc=True)


def settings_summary(settings: Settings) -> dict[str, Any]:
    """A short description of what was configured, for start-up logs."""
    return {
        "models": [m.name for m in settings.models],
        "routes": sorted(settings.resolved_routes()),
        "cache": "redis" if settings.cache.redis_url else ("memory" if settings.cache.enabled else "off"),
        "ledger": settings.ledger.url.split("://", 1)[0],
        "auth": settings.auth.enabled,
    }
