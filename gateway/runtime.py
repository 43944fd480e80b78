"""The gateway's runtime: everything one app instance owns, built from its settings and closed at the end.

Below the HTTP layer: :mod:`gateway.app` builds one in its lifespan and the route modules read it from
``app.state.gateway``; the CLI (``gateway route``, ``gateway replay``) and the benchmarks build their own.
Nothing here knows about HTTP requests.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from backends import Backend, CircuitBreaker, build_backend, build_session
from gateway import components
from gateway.accounting import SqlLedger
from gateway.background import drain_background
from gateway.config import Settings
from gateway.errors import InvalidRequest
from gateway.frontdoors.store import ResponseStore, build_response_store
from gateway.hooks import Admission, Recorder, ResponseCache
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.pricing import load_price_entries
from gateway.quality.monitor import QualityMonitor
from gateway.readiness import Readiness
from gateway.routing import QualityEstimator, Router, embedding_vector, reads_embedding
from gateway.telemetry import Tracing, build_tracing
from gateway.tokens import TiktokenCounter, load_counter
from policies.answer_check import AnswerCheck
from policies.router.loader import load_artifact

if TYPE_CHECKING:
    from cache.semantic import PromptEncoder

log = logging.getLogger("gateway.runtime")


@dataclass(slots=True)
class Gateway:
    """Everything one app instance owns; the HTTP layer reaches it as ``app.state.gateway``."""

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
    tracing: Tracing
    readiness: Readiness
    responses: ResponseStore
    monitor: QualityMonitor | None = None
    #: The adapted router's prompt encoders built so far, by prompt vector (``minilm``, ``minilm-static``): a
    #: reload that switches the vector back and forth reuses them instead of loading the model again.
    router_encoders: dict[str, PromptEncoder] = field(default_factory=dict)


class RouterReloadFailed(InvalidRequest):
    """The configured router artifact could not be loaded (the running router stays)."""


async def reload_router(gw: Gateway) -> dict[str, Any]:
    """Load ``router.artifact`` again (in a thread) and swap it in atomically; what is now serving.

    Raises:
        RouterReloadFailed: no artifact configured, or it does not load (the running router keeps serving).
    """
    path = gw.settings.router.artifact
    if path is None:
        raise RouterReloadFailed("No router.artifact is configured.", code="router_artifact_unset")
    counter = gw.pipeline.counter
    if not isinstance(counter, TiktokenCounter):
        raise RouterReloadFailed("The learned router needs the cl100k_base tokenizer.", code="router_unavailable")
    try:
        estimator = await asyncio.to_thread(load_artifact, Path(path), encode=counter.encode)
        # Calibrating every route reads the whole calibration table: in the thread too, and before anything is
        # swapped, so an artifact that fails here leaves the running router (and its encoder) untouched.
        routes = await asyncio.to_thread(gw.router.calibrated, estimator)
    except (OSError, ValueError, KeyError) as exc:
        raise RouterReloadFailed(f"The router artifact does not load: {exc}", code="router_artifact_invalid") from None
    vector = embedding_vector(estimator)
    if reads_embedding(estimator):
        # The previous encoder stays built (a request may still be waiting on it; the next reload may want it).
        encoder = gw.router_encoders.get(vector)
        if encoder is None:
            encoder = await components.build_router_encoder(gw.settings, gw.cache, vector)
            if encoder is not None:
                gw.router_encoders[vector] = encoder
        gw.pipeline.router_encoder = encoder
    gw.router.set_estimator(estimator, routes)
    log.info("router reloaded: %s from %s", estimator.version, path)
    return describe_router(estimator)


def describe_router(estimator: QualityEstimator | None) -> dict[str, Any]:
    """The serving router's version, kind and held-out figures (JSON-able)."""
    if estimator is None:
        return {"kind": "heuristic"}
    meta: dict[str, Any] = getattr(estimator, "metadata", {})
    return {
        "kind": meta.get("kind", "prior"),
        "version": meta.get("version"),
        "vector": getattr(estimator, "vector", None),  # the prompt vector an adapted router reads
        "training_data": meta.get("training_data"),
        "held_out": meta.get("held_out"),
    }


def load_answer_check() -> AnswerCheck | None:
    """The shipped answer check of ``cascade`` routes (None, logged, if its artifact does not load: a cascade
    then walks its ladder as plain fallbacks)."""
    try:
        return AnswerCheck.load()
    except (OSError, ValueError, KeyError) as exc:
        log.warning("answer check unavailable (%s); cascade routes will not escalate", exc)
        return None


async def build_gateway(settings: Settings) -> Gateway:
    """Build the whole runtime for ``settings`` (the caller closes it with :func:`close_gateway`)."""
    # First, before long-lived objects interleave with it: the price map is read and freed here.
    load_price_entries([m.upstream_name for m in settings.models] + [settings.ledger.baseline_model])
    counter = load_counter()  # its temporary 16 MiB of BPE ranks, too
    server = settings.server
    tracing = build_tracing(settings.telemetry, {m.name: m.backend for m in settings.models})
    http = build_session(
        max_connections=server.upstream_max_connections,
        keepalive_seconds=server.upstream_keepalive_seconds,
        trace_configs=tracing.trace_configs(),
    )
    backends: dict[str, Backend] = {
        spec.name: build_backend(spec, http, scrape_seconds=settings.server.metrics_scrape_seconds)
        for spec in settings.models
    }
    breakers = {
        name: CircuitBreaker(settings.breaker.failure_threshold, settings.breaker.reset_seconds) for name in backends
    }
    estimator = components.load_router(settings, counter)
    router = Router(settings, backends, breakers, estimator)
    metrics = Metrics()
    cache = await components.build_cache(settings, metrics)
    router_encoder = None
    if reads_embedding(estimator):
        router_encoder = await components.build_router_encoder(settings, cache, embedding_vector(estimator))
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
        tracing=tracing,
        router_encoder=router_encoder,
        answer_check=load_answer_check(),
    )
    for backend in backends.values():
        await backend.start()
    readiness = Readiness(backends, breakers, server.health_probe_seconds)
    readiness.start()
    responses = build_response_store(settings, recorder.db if isinstance(recorder, SqlLedger) else None, metrics)
    gw = Gateway(
        settings,
        http,
        backends,
        breakers,
        router,
        pipeline,
        metrics,
        cache,
        recorder,
        admission,
        tracing,
        readiness,
        responses,
    )
    if router_encoder is not None:
        gw.router_encoders[router_encoder.vector] = router_encoder
    if settings.quality.enabled:
        gw.monitor = await components.build_monitor(gw, counter)
        pipeline.monitor = gw.monitor
    return gw


async def close_gateway(gw: Gateway) -> None:
    """Stop background work, flush the cache and the ledger, close connections."""
    await gw.readiness.aclose()
    await drain_background()
    if gw.monitor is not None:
        await gw.monitor.aclose()
    for backend in gw.backends.values():
        await backend.aclose()
    await gw.cache.aclose()
    for encoder in gw.router_encoders.values():
        encoder.close()  # the semantic cache's own (when shared) is closed already: closing again is a no-op
    await gw.responses.aclose()
    await gw.recorder.aclose()
    await gw.http.close()
    await gw.tracing.aclose()
