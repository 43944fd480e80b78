"""The response cache the pipeline calls: keys, store, semantic search, Cache-Control, failure isolation.

Lookups run inside a tight timeout; stores go to a bounded queue drained by a few background workers,
so neither ever delays an answer for long or fails a request. When the store fails (Redis down or slow)
the request is served from the upstream, ``gateway_cache_errors{op}`` counts it, a warning is logged at
most once per ``error_log_interval_seconds``, and the store is left alone for ``retry_after_seconds``
(after a refused connection, or ``trip_after_failures`` timeouts in a row) before the next request tries
it again: the cache recovers by itself when Redis returns.

Embeddings are cached exactly (never semantically) and whatever their sampling settings: a vector is a
function of its input. An answer larger than ``max_entry_bytes`` is not stored (``op="too_large"``).

Per request: ``Cache-Control: no-cache`` (or ``Pragma: no-cache`` alone) skips the lookup (the fresh answer is
stored), ``no-store`` (or the body's explicit ``store: false``, a chat body's or the Responses API's) keeps the
answer out of the cache, and ``x-gateway-cache-ttl: SECONDS`` sets its lifetime (0: no store).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from cache.assemble import assemble
from cache.base import BucketMember, ResponseStore
from cache.directives import cache_control
from cache.entry import servable
from cache.index import Candidate, VectorIndex
from cache.judge import Check, answer_text
from cache.keys import CacheKeys, build_keys, is_deterministic
from cache.learn import Decision, Learner, RouteRules
from cache.semantic import F32, SemanticEncoder, encode_vector
from cache.verify import PASS, Verdict, verify
from gateway.config import CacheSettings
from gateway.context import RequestContext
from gateway.hooks import CachedAnswer
from gateway.logs import OutageLog
from gateway.metrics import Metrics

log = logging.getLogger("gateway.cache")

_CTX_KEY = "cache"
_STORE_ERRORS = (OSError, TimeoutError)  # StoreError is an OSError
_EMBED_ERRORS = (ValueError, RuntimeError, TimeoutError)
_PAGE = 1000  # bucket rows read per round trip


@dataclass(slots=True)
class _Plan:
    """What the cache decided for one request (kept in ``ctx.extra``)."""

    keys: CacheKeys
    store: bool
    ttl: int
    route: str | None = None
    vector: F32 | None = None
    explore: tuple[Decision, Candidate] | None = None  # a sampled candidate not served: judged with the answer
    #: ``Cache-Control: no-store`` or ``store: false``: nothing of the request is kept, so it is never sent to a
    #: judge either (the question is stored with the verdict)
    private: bool = False


@dataclass(slots=True)
class _Write:
    key: str
    value: bytes
    ttl: int
    bucket: str | None
    text: str | None
    vector: F32 | None


class CacheService:
    """The :class:`gateway.hooks.ResponseCache` implementation over a :class:`ResponseStore`."""

    def __init__(
        self,
        store: ResponseStore,
        settings: CacheSettings,
        metrics: Metrics,
        *,
        semantic_routes: dict[str, RouteRules] | None = None,
        encoder: SemanticEncoder | None = None,
        learner: Learner | None = None,
    ) -> None:
        self.store_backend = store
        self.settings = settings
        self.metrics = metrics
        self.semantic_routes = semantic_routes or {}
        self.encoder = encoder
        self.learner = learner or Learner(
            self.semantic_routes, check_rate=settings.semantic_check_rate, explore_rate=settings.semantic_explore_rate
        )
        self.index = VectorIndex(
            encoder.embedder.dim if encoder is not None else 0,
            max_bucket=settings.semantic_max_bucket,
            max_vectors=settings.semantic_index_max_vectors,
        )
        #: Sampled semantic decisions waiting for a judge (:class:`cache.judge.HitChecker` drains it).
        self.checks: asyncio.Queue[Check] = asyncio.Queue(maxsize=settings.semantic_check_queue)
        self.checks_submitted = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop the service runs in (set by start)
        self._syncing: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._timeout_s = settings.timeout_ms / 1000.0
        self._write_timeout_s = settings.write_timeout_ms / 1000.0
        self._errors = OutageLog(log, settings.error_log_interval_seconds)
        self._embed_errors = OutageLog(log, settings.error_log_interval_seconds)
        self._down_until = 0.0
        self._consecutive = 0
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(maxsize=settings.write_queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False
        self._pending = 0

    # -- the pipeline's hooks ------------------------------------------------------------------------

    async def lookup(self, ctx: RequestContext) -> CachedAnswer | None:
        """A stored answer for ``ctx`` (exact, then semantic), or None; sets ``ctx.cache_status``."""
        plan = self._plan(ctx)
        if plan is None:
            ctx.cache_status = "bypass"
            return None
        ctx.extra[_CTX_KEY] = plan
        if "no-cache" in cache_control(ctx.headers):
            ctx.cache_status = "bypass"
            return None
        ctx.cache_status = "miss"
        if not self._available():
            self._failed("get", TimeoutError("store skipped after a recent failure"), trip=False)
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                raw = await self.store_backend.get(plan.keys.exact)
        except _STORE_ERRORS as exc:
            self._failed("get", exc)
            return None
        self._ok()
        found = _decode(raw, "hit")
        if found is not None:
            ctx.cache_status = "hit"
            return found
        if plan.keys.bucket is not None and plan.keys.text is not None:
            return await self._semantic(ctx, plan)
        return None

    def store(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        """Queue a non-streamed answer for storing (if the request's plan allows it)."""
        plan = ctx.extra.get(_CTX_KEY)
        if not isinstance(plan, _Plan):
            return
        if ctx.endpoint == "embeddings":
            data = body.get("data")
            if not isinstance(data, list) or not data or not plan.store:
                return
            if _embeddings_size_at_least(data) > self.settings.max_entry_bytes:  # without serialising them
                self.metrics.cache_errors.labels("too_large").inc()
                return
            self._enqueue(ctx, plan, body)
            return
        if not body.get("choices"):
            return
        if any(isinstance(c, dict) and c.get("finish_reason") is None for c in body["choices"]):
            return
        self._explored(ctx, plan, body)
        if plan.store:
            self._enqueue(ctx, plan, body)

    def wants_stream(self, ctx: RequestContext) -> bool:
        """Collect a streamed answer's chunks when it would be stored (or judged against a cached one)."""
        plan = ctx.extra.get(_CTX_KEY)
        return isinstance(plan, _Plan) and (plan.store or plan.explore is not None)

    def store_stream(self, ctx: RequestContext, chunks: list[dict[str, Any]]) -> None:
        """Assemble a completed stream into a response body and queue it for storing."""
        plan = ctx.extra.get(_CTX_KEY)
        if not isinstance(plan, _Plan) or ctx.error_type is not None:
            return
        usage = {
            "prompt_tokens": ctx.usage.prompt_tokens,
            "completion_tokens": ctx.usage.completion_tokens,
            "total_tokens": ctx.usage.prompt_tokens + ctx.usage.completion_tokens,
        }
        model = ctx.chosen_model or ctx.requested_model
        body = assemble(chunks, chat=ctx.endpoint == "chat", model=model, usage=usage)
        if body is not None:
            self._explored(ctx, plan, body)
            if plan.store:
                self._enqueue(ctx, plan, body)

    async def start(self) -> None:
        """Start the background writers (inside the app's event loop)."""
        self.loop = asyncio.get_running_loop()
        for i in range(self.settings.write_concurrency):
            self._workers.append(asyncio.create_task(self._writer(), name=f"cache-writer-{i}"))

    async def aclose(self) -> None:
        """Write what is queued (for at most a few seconds), stop the writers, close the store."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(self._write_timeout_s * 2, 2.0)):
                await self._queue.join()
        for task in [*self._workers, *self._background]:
            task.cancel()
        await asyncio.gather(*self._workers, *self._background, return_exceptions=True)
        self._workers.clear()
        if self.encoder is not None:
            self.encoder.close()
        with contextlib.suppress(*_STORE_ERRORS):
            await self.store_backend.aclose()

    @property
    def pending_writes(self) -> int:
        """Writes queued or in progress."""
        return self._pending

    async def flush(self) -> None:
        """Wait until every queued write is done (tests and benchmarks)."""
        await self._queue.join()

    # -- decisions -----------------------------------------------------------------------------------

    def _plan(self, ctx: RequestContext) -> _Plan | None:
        if ctx.endpoint == "embeddings":  # a vector is a function of its input: any request, exact match only
            route = None
        elif ctx.endpoint not in ("chat", "completions"):
            return None
        elif self.settings.only_deterministic and not is_deterministic(ctx.body):
            return None
        else:
            route = ctx.requested_model if ctx.requested_model in self.semantic_routes else None
        semantic = self.encoder is not None and route is not None
        try:
            keys = build_keys(
                ctx, shared=self.settings.shared_namespace, semantic=semantic, by_team=self.settings.team_namespace
            )
        except (TypeError, ValueError) as exc:  # a body orjson cannot encode: not cacheable
            log.debug("request not cacheable: %s", exc)
            return None
        if keys.text is not None and self.encoder is not None and not self.encoder.reads_whole(keys.text):
            # cut at the model's length, or holding characters it cannot read: its vector would equal that of
            # texts it does not equal (a similarity of 1.0), so it is matched exactly only, and not stored to match
            keys = CacheKeys(keys.exact)
        ttl = self._ttl(ctx.constraints.cache_ttl_seconds)
        # an explicit ``store: false`` (a chat body's, or the Responses API's) asks for no storage as no-store does
        private = "no-store" in cache_control(ctx.headers)
        private = private or ctx.body.get("store") is False or ctx.extra.get("store") is False
        return _Plan(
            keys, ttl > 0 and not private, max(ttl, 1), route if keys.bucket is not None else None, private=private
        )

    def _ttl(self, requested: int | None) -> int:
        """The lifetime for an answer: the request's ``x-gateway-cache-ttl`` (validated in the parse stage,
        a bad value is a 400 there) up to ``max_ttl_seconds``, else the default."""
        if requested is None:
            return self.settings.ttl_seconds
        return min(requested, self.settings.max_ttl_seconds)

    # -- semantic ------------------------------------------------------------------------------------

    async def _semantic(self, ctx: RequestContext, plan: _Plan) -> CachedAnswer | None:
        assert self.encoder is not None and plan.keys.bucket is not None and plan.keys.text is not None
        assert plan.route is not None
        bucket, text, route = plan.keys.bucket, plan.keys.text, plan.route
        rules = self.semantic_routes[route]
        sync, started = self._sync(bucket)  # usually one round trip for the rows added since the last lookup
        try:
            if started or sync.done():  # a read already under way (a large bucket's pages): don't queue behind it
                async with asyncio.timeout(self._timeout_s):
                    await asyncio.shield(sync)
        except _STORE_ERRORS as exc:
            if sync.done():
                self._failed("vectors", exc)
                return None
            # still reading a large bucket: search what the index holds, the rest arrives meanwhile
        try:
            searched = await self.encoder.encode_then(text, functools.partial(self._rank, bucket, text, rules.floor))
        except (ValueError, RuntimeError, TimeoutError) as exc:
            self.metrics.cache_errors.labels("embed").inc()
            self._embed_errors.failed(f"response cache embedding failed, serving from the upstream: {exc!r}")
            return None
        if searched is None:  # the embedder is saturated
            self.metrics.cache_errors.labels("embed").inc()
            return None
        plan.vector, ranked = searched
        ctx.prompt_vector = plan.vector  # the adapted router reads it: one embedding per request
        if not ranked:
            return None
        decisions = [
            (cand, self.learner.decide(route, cand.entry_key, cand.score, verdict.reason, verdict.ok))
            for cand, verdict in ranked
        ]
        for cand, decision in decisions:
            if not decision.served:
                continue
            try:
                async with asyncio.timeout(self._timeout_s):
                    raw = await self.store_backend.get(cand.entry_key)
            except _STORE_ERRORS as exc:
                self._failed("get", exc)
                return None
            found = _decode(raw, "semantic-hit", cand.score)
            if found is None:  # expired since the bucket was read: try the next candidate
                decision.served = False
                continue
            self.learner.count(route, served=True)
            found.reason = f"{decision.explain()} (hit {decision.id})"
            ctx.cache_status = "semantic-hit"
            ctx.cache_score = cand.score
            ctx.extra["cache_decision"] = found.reason
            if not plan.private and self.learner.sample(decision):
                self._submit(self._check(decision, cand, text, ctx.body, found.body, reference=None))
            return found
        self.learner.count(route, served=False)
        ctx.extra["cache_decision"] = decisions[0][1].explain()
        for cand, decision in decisions:
            if decision.verdict == "pass":
                if not plan.private and self.learner.sample(decision):
                    plan.explore = (decision, cand)
                break
        return None

    def _sync(self, bucket: str) -> tuple[asyncio.Task[None], bool]:
        """The task bringing ``bucket``'s index up to date (one per bucket), and whether this call started it.

        It reads the rows appended since the index's cursor, ``_PAGE`` at a time, until it has caught up:
        a bucket the index has not seen (a new process, or evicted from the index) takes a few pages, which
        go on in the background when the lookup that started them stops waiting.
        """
        task = self._syncing.get(bucket)
        if task is not None:
            return task, False
        task = asyncio.get_running_loop().create_task(self._read_bucket(bucket), name=f"cache-sync-{bucket[:12]}")
        self._syncing[bucket] = task
        self._background.add(task)
        task.add_done_callback(functools.partial(self._synced, bucket))
        return task, True

    async def _read_bucket(self, bucket: str) -> None:
        while True:
            delta = await self.store_backend.bucket_since(bucket, self.index.cursor(bucket), _PAGE)
            self.index.apply(bucket, delta)
            if len(delta.ids) < _PAGE:
                return

    def _synced(self, bucket: str, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if self._syncing.get(bucket) is task:
            del self._syncing[bucket]
        if not task.cancelled() and task.exception() is not None:
            log.debug("reading bucket %s failed: %r", bucket, task.exception())

    def _rank(self, bucket: str, text: str, floor: float, vector: F32) -> list[tuple[Candidate, Verdict]]:
        """The nearest candidates at or above ``floor``, each with the verifier's verdict (worker thread)."""
        out: list[tuple[Candidate, Verdict]] = []
        for cand in self.index.search(bucket, vector, limit=4):
            if cand.score < floor:
                break
            out.append((cand, verify(text, cand.question) if self.settings.semantic_verifier else PASS))
        return out

    @staticmethod
    def _check(
        decision: Decision,
        cand: Candidate,
        question: str,
        request: dict[str, Any],
        cached: dict[str, Any],
        reference: str | None,
    ) -> Check:
        return Check(
            decision.id,
            decision.route,
            decision.served,
            decision.score,
            question,
            cand.question,
            answer_text(cached),
            request,
            reference,
        )

    def _explored(self, ctx: RequestContext, plan: _Plan, body: dict[str, Any]) -> None:
        """A sampled candidate that was not served: judge the cached answer against the model's fresh one."""
        if plan.explore is None or ctx.error_type is not None:
            return
        decision, cand = plan.explore
        plan.explore = None
        question = plan.keys.text or ""
        fresh = answer_text(body)
        task = asyncio.get_running_loop().create_task(self._explore_check(decision, cand, question, ctx.body, fresh))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _explore_check(
        self, decision: Decision, cand: Candidate, question: str, request: dict[str, Any], fresh: str
    ) -> None:
        try:
            async with asyncio.timeout(self._write_timeout_s):
                raw = await self.store_backend.get(cand.entry_key)
        except _STORE_ERRORS as exc:
            self._failed("get", exc)
            return
        cached = _decode(raw, "semantic-hit")
        if cached is not None:
            self._submit(self._check(decision, cand, question, request, cached.body, reference=fresh))

    def _submit(self, check: Check) -> None:
        try:
            self.checks.put_nowait(check)
        except asyncio.QueueFull:
            self.metrics.cache_errors.labels("check_queue_full").inc()
            return
        self.checks_submitted += 1

    # -- writes --------------------------------------------------------------------------------------

    def _enqueue(self, ctx: RequestContext, plan: _Plan, body: dict[str, Any]) -> None:
        if self._closing:
            return
        if ctx.degraded is not None or (ctx.cache_scope is not None and ctx.chosen_model != ctx.requested_model):
            # A fallback's answer (or a model asked for by name answered by another): under this request's key,
            # it would be served for the whole TTL, after the model the plan wanted recovered.
            return
        entry = {"model": ctx.chosen_model, "stored_at": time.time(), "body": body}
        try:
            value = orjson.dumps(entry)
        except TypeError as exc:
            log.debug("answer not cacheable: %s", exc)
            return
        if len(value) > self.settings.max_entry_bytes:
            self.metrics.cache_errors.labels("too_large").inc()
            return
        item = _Write(plan.keys.exact, value, plan.ttl, plan.keys.bucket, plan.keys.text, plan.vector)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.cache_errors.labels("queue_full").inc()
            return
        self._pending += 1

    async def _writer(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._write(item)
            finally:
                self._pending -= 1
                self._queue.task_done()

    async def _write(self, item: _Write) -> None:
        if not self._available():
            self._failed("put", TimeoutError("store skipped after a recent failure"), trip=False)
            return
        vector = item.vector
        if item.bucket is not None and item.text is not None and vector is None and self.encoder is not None:
            try:
                vector = await self.encoder.encode(item.text)
            except _EMBED_ERRORS as exc:
                self.metrics.cache_errors.labels("embed").inc()
                self._embed_errors.failed(f"response cache embedding failed, serving from the upstream: {exc!r}")
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await self.store_backend.put(item.key, item.value, item.ttl)
                if item.bucket is not None and item.text is not None and vector is not None:
                    bucket_ttl = max(item.ttl, self.settings.ttl_seconds)
                    member = BucketMember(item.key, encode_vector(vector), item.text, time.time() + item.ttl)
                    await self.store_backend.add_vector(item.bucket, member, bucket_ttl)
        except _STORE_ERRORS as exc:
            self._failed("put", exc)
            return
        self._ok()

    # -- failure isolation ---------------------------------------------------------------------------

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, op: str, exc: BaseException, *, trip: bool = True) -> None:
        self.metrics.cache_errors.labels(op).inc()
        self._errors.failed(f"response cache {op} failed, serving from the upstream: {exc!r}")
        if trip:
            # A refused connection means the store is down; a timeout may be one slow reply (or event-loop
            # lag under load), so only a run of them counts. Either way: leave the store alone for a while.
            slow = isinstance(exc, TimeoutError)
            self._consecutive += 1
            if not slow or self._consecutive >= self.settings.trip_after_failures:
                self._down_until = time.monotonic() + self.settings.retry_after_seconds
                self._consecutive = 0

    def _ok(self) -> None:
        self._consecutive = 0
        if self._errors.failing:
            self._errors.recovered("response cache store is reachable again")


def _embeddings_size_at_least(data: list[Any]) -> int:
    """A lower bound of the JSON size of an embeddings answer's ``data``: its base64 text, or 2 bytes a float."""
    size = 0
    for item in data:
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vector, str):
            size += len(vector)
        elif isinstance(vector, list):
            size += 2 * len(vector)
    return size


def _decode(raw: bytes | None, status: str, score: float | None = None) -> CachedAnswer | None:
    if raw is None:
        return None
    try:
        entry = orjson.loads(raw)
        body = entry["body"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        log.warning("ignoring an unreadable cache entry")
        return None
    if not isinstance(body, dict) or not servable(body):
        log.warning("ignoring a cache entry that is not an answer")
        return None
    model = entry.get("model")
    return CachedAnswer(body=body, status=status, score=score, original_model=model if isinstance(model, str) else None)
