"""The gateway's runtime: everything one app instance owns, built from its settings and closed at the end.

Below the HTTP layer: :mod:`gateway.app` builds one in its lifespan and the route modules read it from
``app.state.gateway``; the CLI (``gateway route``, ``gateway replay``) and the benchmarks build their own.
Nothing here knows about HTTP requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from backends import Backend, CircuitBreaker, build_backend, build_session
from gateway import components
from gateway.accounting import SqlLedger
from gateway.background import drain_background
from gateway.config import Settings
from gateway.errors import ConfigError, InvalidRequest
from gateway.frontdoors.store import ResponseStore, build_response_store
from gateway.hooks import Admission, Recorder, ResponseCache
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.pricing import baseline_problem, load_price_entries, unpriced_hosted_models
from gateway.quality.monitor import QualityMonitor
from gateway.readiness import Readiness
from gateway.routing import QualityEstimator, Router, embedding_kind, reads_embedding
from gateway.telemetry import Tracing, build_tracing, upstream_of
from gateway.tokens import TiktokenCounter, load_counter
from policies.answer_check import AnswerCheck
from policies.router.loader import load_artifact
from policies.router.watch import ArtifactStamp, artifact_stamp

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
    #: The adapted router's prompt encoders built so far, by prompt vector (``minilm``, ``minilm-static``) and word
    #: pieces read: a reload that switches back and forth reuses them instead of loading the model again.
    router_encoders: dict[tuple[str, int], PromptEncoder] = field(default_factory=dict)
    #: What the serving router was loaded from, and when (``GET /admin/router``; what :class:`RouterWatch` compares).
    router_source: RouterSource = field(default_factory=lambda: RouterSource())
    #: Held by a reload from its stamp to its swap: one reload at a time in a process (admin, watch, adaptation).
    router_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The task following ``router.artifact`` on disk (started in the app's lifespan: :func:`start_router_watch`).
    router_watch: RouterWatch | None = None


@dataclass(slots=True)
class RouterSource:
    """Where this process's serving router came from."""

    #: ``router.artifact``'s stamp taken just before the load that serves (None: unset, or no artifact there yet).
    stamp: ArtifactStamp | None = None
    #: When that load happened (``time.time()``).
    loaded_at: float = field(default_factory=time.time)
    #: What loaded it: ``start``, ``reload`` (``POST /admin/router/reload``), ``background adaptation`` (the
    #: process that fitted it) or ``watch`` (:class:`RouterWatch`: the artifact changed on disk).
    by: str = "start"


class RouterReloadFailed(InvalidRequest):
    """The configured router artifact could not be loaded (the running router stays).

    ``transient``: the failure says nothing about the files (the file system: EMFILE, EIO, a file replaced under
    the read), so the same version may load when tried again (:class:`RouterWatch` retries it); else the artifact
    itself is bad (a ``ValueError``, ``KeyError`` or ``TypeError`` from its checks) and will fail the same way."""

    def __init__(self, message: str, *, code: str | None = None, transient: bool = False) -> None:
        super().__init__(message, code=code)
        self.transient = transient


async def reload_router(gw: Gateway, *, by: str = "reload") -> dict[str, Any]:
    """Load ``router.artifact`` again (in a thread) and swap it in atomically, in this process; what is now serving
    (:func:`router_status`). The other processes follow the artifact on disk (:class:`RouterWatch`).

    Raises:
        RouterReloadFailed: no artifact configured, or it does not load (the running router keeps serving).
    """
    path = gw.settings.router.artifact
    if path is None:
        raise RouterReloadFailed("No router.artifact is configured.", code="router_artifact_unset")
    counter = gw.pipeline.counter
    if not isinstance(counter, TiktokenCounter):
        raise RouterReloadFailed("The learned router needs the cl100k_base tokenizer.", code="router_unavailable")
    async with gw.router_lock:
        # Taken before the load: a save that lands meanwhile changes the stamp again, and the watch looks again.
        stamp = await asyncio.to_thread(artifact_stamp, Path(path))
        try:
            estimator = await asyncio.to_thread(load_artifact, Path(path), encode=counter.encode)
            # Calibrating every route reads the whole calibration table: in the thread too, and before anything is
            # swapped, so an artifact that fails here leaves the running router (and its encoder) untouched.
            routes = await asyncio.to_thread(gw.router.calibrated, estimator)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RouterReloadFailed(
                f"The router artifact does not load: {exc}",
                code="router_artifact_invalid",
                transient=isinstance(exc, OSError),
            ) from None
        kind = embedding_kind(estimator)
        if reads_embedding(estimator):
            # The previous encoder stays built (a request may still be waiting on it; the next reload may want it).
            encoder = gw.router_encoders.get(kind)
            if encoder is None:
                encoder = await components.build_router_encoder(gw.settings, gw.cache, *kind)
                if encoder is not None:
                    gw.router_encoders[kind] = encoder
            gw.pipeline.router_encoder = encoder
        gw.router.set_estimator(estimator, routes)
        gw.router_source = RouterSource(stamp, time.time(), by)
    log.info("router reloaded (%s): %s from %s", by, estimator.version, path)
    return router_status(gw)


def served_artifact_id(gw: Gateway) -> str | None:
    """The ``artifact_id`` of the adapted artifact this process serves (None: a prior, or one saved without)."""
    meta = getattr(gw.router.estimator, "metadata", None)
    value = meta.get("artifact_id") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def router_status(gw: Gateway) -> dict[str, Any]:
    """:func:`describe_router` of the serving router, and which process serves it, from which save, since when, and
    how this process follows ``router.artifact`` (JSON-able; ``GET /admin/router``)."""
    source = gw.router_source
    watch = gw.router_watch
    adapter = gw.monitor.adapter if gw.monitor is not None else None
    return {
        **describe_router(gw.router.estimator),
        "artifact_id": served_artifact_id(gw),
        "artifact": gw.settings.router.artifact,
        "pid": os.getpid(),
        "loaded_at": datetime.fromtimestamp(source.loaded_at, UTC).isoformat(timespec="milliseconds"),
        "loaded_by": source.by,
        "watch": watch.status() if watch is not None else {"running": False, "every_s": 0.0},
        "background_adaptation": adapter.status() if adapter is not None else None,
    }


#: The most checks :class:`RouterWatch` lets pass between two tries of a version that failed for a transient reason.
_MAX_RETRY_CHECKS = 64


class RouterWatch:
    """Follows ``router.artifact`` on disk in this process: every ``every_s`` it takes the directory's stamp (a
    few ``stat`` calls and ``adapted.json``'s id, in a thread: :func:`policies.router.watch.artifact_stamp`) and,
    when the artifact changed and is not the save this process already serves, reloads it through
    :func:`reload_router` (the same checks as ``POST /admin/router/reload``).

    A **bad** artifact (its checks raise ``ValueError``, ``KeyError`` or ``TypeError``: it fails the same way every
    time) leaves the running router serving and is refused once per version (its stamp), logged once, not loaded
    again until the files change. A **transient** failure (the file system: ``OSError`` such as EMFILE;
    ``MemoryError``; the prompt encoder of a new vector that did not build; anything else that is not the
    artifact's checks) leaves the running router serving too, and the same version is tried again: at the next
    check, then 2, 4, ... checks later (at most :data:`_MAX_RETRY_CHECKS`), at once when another save lands;
    logged once per distinct error. One that is removed is logged once and the running router stays. A directory
    that holds no artifact yet (background adaptation will write one) is picked up when one appears. The loop
    outlives any error (logged once per distinct error); it ends only when cancelled (:meth:`aclose`).
    """

    def __init__(self, gw: Gateway, path: Path, every_s: float) -> None:
        self.gw = gw
        self.path = path
        self.every_s = every_s
        self.checks = 0
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_check_at: float | None = None
        self._refused: ArtifactStamp | None = None  # the last version that is bad (logged once)
        self._retrying: ArtifactStamp | None = None  # the version a transient failure keeps from serving
        self._tries = 0  # its transient failures in a row
        self._wait = 0  # checks to let pass before it is tried again
        self._retry_logged: str | None = None  # the last transient error logged (once per distinct error)
        self._gone_logged = False
        self._last_logged_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        """Counters and the last failure (JSON-able)."""
        last = self.last_check_at
        return {
            "running": self._task is not None and not self._task.done(),
            "every_s": self.every_s,
            "checks": self.checks,
            "reloads": self.reloads,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_check_at": None if last is None else datetime.fromtimestamp(last, UTC).isoformat(timespec="seconds"),
            "retrying": self._retrying is not None,  # a version that failed for a transient reason is tried again
        }

    async def check(self) -> str:
        """One check; what it found: ``unchanged``, ``missing`` (no artifact there), ``served`` (the files changed
        but hold the save this process serves), ``busy`` (a reload is under way here: looked at next time),
        ``reloaded``, ``refused`` (a bad artifact; the running router stays, this version is not tried again),
        ``failed`` (a transient failure; the running router stays, this version is tried again) or ``waiting``
        (the checks to let pass before that try)."""
        self.checks += 1
        self.last_check_at = time.time()
        stamp = await asyncio.to_thread(artifact_stamp, self.path)
        source = self.gw.router_source
        if stamp is None:
            if source.stamp is not None and not self._gone_logged:
                self._gone_logged = True
                log.warning("router.artifact %s holds no artifact any more; the running router stays", self.path)
            return "missing"
        self._gone_logged = False
        if stamp == source.stamp or stamp == self._refused:
            return "unchanged"
        if stamp.artifact_id is not None and stamp.artifact_id == served_artifact_id(self.gw):
            source.stamp = stamp  # the same save (files copied or touched, or a look mid-save): nothing to load
            self._retrying = None
            return "served"
        if stamp != self._retrying:
            self._retrying, self._tries, self._wait = None, 0, 0  # another version: tried at once
        elif self._wait > 0:
            self._wait -= 1
            return "waiting"
        if self.gw.router_lock.locked():
            return "busy"
        try:
            await reload_router(self.gw, by="watch")
        except Exception as exc:  # noqa: BLE001  # the artifact's checks (bad), else transient (logged below)
            self.failures += 1
            self.last_error = str(exc) or repr(exc)
            if isinstance(exc, RouterReloadFailed) and not exc.transient:
                return self._refuse(stamp, exc)
            return self._retry(stamp, exc)
        self._retrying, self._retry_logged = None, None
        self.reloads += 1
        return "reloaded"

    def _refuse(self, stamp: ArtifactStamp, exc: RouterReloadFailed) -> str:
        self._refused, self._retrying = stamp, None
        log.warning(
            "router.artifact %s changed (%s) but does not load; the running router (%s) stays: %s",
            self.path,
            stamp.describe(),
            describe_router(self.gw.router.estimator).get("version"),
            exc,
        )
        return "refused"

    def _retry(self, stamp: ArtifactStamp, exc: Exception) -> str:
        self._retrying = stamp
        self._tries += 1
        self._wait = min(2 ** (self._tries - 1), _MAX_RETRY_CHECKS) - 1
        text = f"{stamp.describe()}: {exc!r}"  # once per distinct error (and version)
        if text != self._retry_logged:
            self._retry_logged = text
            log.warning(
                "router.artifact %s changed (%s) but could not be loaded now; the running router (%s) stays and it "
                "is retried (at longer intervals while this lasts): %s",
                self.path,
                stamp.describe(),
                describe_router(self.gw.router.estimator).get("version"),
                exc if isinstance(exc, RouterReloadFailed) else repr(exc),
                exc_info=not isinstance(exc, RouterReloadFailed | OSError | MemoryError),
            )
        return "failed"

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.check()
            except Exception as exc:  # never ends the loop: a watch that dies silently leaves a stale router
                self.failures += 1
                self.last_error = repr(exc)
                if self.last_error != self._last_logged_error:
                    self._last_logged_error = self.last_error
                    log.exception("router.artifact watch: the check failed (it goes on): %r", exc)

    def start(self) -> None:
        """Start checking in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="router-watch")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover - _run catches what it can
            log.error("router.artifact watch stopped: %r", task.exception())

    async def aclose(self) -> None:
        """Stop checking (a reload under way is cancelled before its swap, or finishes)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def start_router_watch(gw: Gateway) -> RouterWatch | None:
    """Start following ``router.artifact`` in this process (the app's lifespan); None when there is nothing to
    follow: no artifact configured, ``router.watch_seconds: 0``, or no learned router (no ``cl100k_base``)."""
    settings = gw.settings.router
    if settings.artifact is None or settings.watch_seconds <= 0 or not isinstance(gw.pipeline.counter, TiktokenCounter):
        return None
    gw.router_watch = RouterWatch(gw, Path(settings.artifact), settings.watch_seconds)
    gw.router_watch.start()
    return gw.router_watch


async def stop_router_watch(gw: Gateway) -> None:
    """Stop :func:`start_router_watch`'s task (idempotent)."""
    if gw.router_watch is not None:
        await gw.router_watch.aclose()


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
    problem = baseline_problem(settings)
    if problem is not None:
        raise ConfigError(problem)
    for name in unpriced_hosted_models(settings):
        log.warning(
            "model %s has no price (not in litellm's price map; set input_cost_per_token / output_cost_per_token, "
            "0 if free): its requests are recorded at $0 and no budget bounds them",
            name,
        )
    for spec in settings.models:
        if spec.api_key_env and not spec.api_key():
            # the compose file's OPENAI_API_KEY: ${OPENAI_API_KEY:-} is empty until set: every call a 502 "401"
            log.warning(
                "model %s: its api_key_env %s is %s: it is called without a key (a hosted API refuses every call)",
                spec.name,
                spec.api_key_env,
                "empty" if spec.api_key_env in os.environ else "not set",
            )
    counter = load_counter()  # its temporary 16 MiB of BPE ranks, too
    server = settings.server
    tracing = build_tracing(
        settings.telemetry, {m.name: upstream_of(m) for m in settings.models}, settings.resolved_routes()
    )
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
    artifact = settings.router.artifact
    stamp = artifact_stamp(Path(artifact)) if artifact is not None else None  # before the load: see RouterWatch
    estimator = components.load_router(settings, counter)
    router = Router(settings, backends, breakers, estimator)
    metrics = Metrics()
    metrics.watch(backends, breakers)  # several workers: each publishes its backend gauges (else nothing)
    cache = await components.build_cache(settings, metrics)
    router_encoder = None
    if reads_embedding(estimator):
        router_encoder = await components.build_router_encoder(settings, cache, *embedding_kind(estimator))
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
    gw.router_source = RouterSource(stamp)
    if router_encoder is not None:
        gw.router_encoders[embedding_kind(estimator)] = router_encoder
    if settings.quality.enabled:
        gw.monitor = await components.build_monitor(gw, counter)
        pipeline.monitor = gw.monitor
    return gw


async def close_gateway(gw: Gateway) -> None:
    """Stop background work, flush the cache and the ledger, close connections."""
    await stop_router_watch(gw)
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
    gw.metrics.close()  # several workers: this one's last counts written, its live gauges out of the sum
