"""The gateway's runtime: everything one app instance owns, built from its settings and closed at the end.

Below the HTTP layer: :mod:`gateway.app` builds one in its lifespan and the route modules read it from
``app.state.gateway``; the CLI (``gateway route``, ``gateway replay``) and the benchmarks build their own.
Nothing here knows about HTTP requests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp

from backends import Backend, CircuitBreaker, build_backend, build_session
from gateway import components
from gateway.config import Settings
from gateway.hooks import Admission, Recorder, ResponseCache
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, drain_background
from gateway.pricing import load_price_entries
from gateway.quality.monitor import QualityMonitor
from gateway.readiness import Readiness
from gateway.routing import QualityEstimator, Router
from gateway.telemetry import Tracing, build_tracing
from gateway.tokens import TiktokenCounter, TokenCounter, load_counter
from policies.answer_check import AnswerCheck

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
    monitor: QualityMonitor | None = None


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
    router = Router(settings, backends, breakers, load_estimator(counter))
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
        answer_check=load_answer_check(),
        tracing=tracing,
    )
    for backend in backends.values():
        await backend.start()
    readiness = Readiness(backends, breakers, server.health_probe_seconds)
    readiness.start()
    gw = Gateway(
        settings, http, backends, breakers, router, pipeline, metrics, cache, recorder, admission, tracing, readiness
    )
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
    await gw.recorder.aclose()
    await gw.http.close()
    await gw.tracing.aclose()
