"""The request pipeline: the only place that knows the order of the stages.

    0. identify  who is calling, before the body is read     (Admission.identify: :meth:`Pipeline.identify`)
    1. parse     JSON body -> validated request, constraints  (gateway.protocol, gateway.constraints)
    2. admit     the caller's rate limits and budget          (Admission.admit)
    3. features  prompt tokens, capabilities, output size     (gateway.features)
    4. cache     exact / semantic lookup                      (ResponseCache hook)
    5. decide    rank candidates for route + constraints      (gateway.routing -> policies)
    6. call      try the ranking in order, breaker/backoff    (backends; one loop, streaming or not)
    7. relay     return the body or stream the chunks         (gateway.streaming)
    8. record    cost, ledger row, metrics, cache store       (Recorder, Metrics, ResponseCache)

Stages 0-6 happen before the first byte goes to the client, so a failure there can still fall back or
return a clean error; after it, a failure ends the stream with an SSE error event. Every request,
whatever happened, is recorded exactly once. Nothing here imports FastAPI.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

from backends import Backend, CircuitBreaker, UpstreamResponse, UpstreamStream
from gateway.background import run_in_background
from gateway.cascade import Cascade, router_pick
from gateway.charges import Charges, in_flight
from gateway.config import Settings
from gateway.constraints import Constraints
from gateway.context import Endpoint, RequestContext, usage_tokens
from gateway.errors import (
    AllCandidatesFailed,
    BudgetExceeded,
    GatewayError,
    InvalidRequest,
    NotFound,
    UpstreamError,
    is_retryable,
)
from gateway.features import RequestFeatures, extract_features
from gateway.headers import gateway_headers
from gateway.hooks import Admission, CachedAnswer, QualityHook, Recorder, ResponseCache
from gateway.metrics import Metrics
from gateway.pricing import baseline_price
from gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InferenceRequest,
    check_fan_out,
    check_not_cut,
    choice_text,
    first_finish_reason,
    load_json_object,
    validate,
)
from gateway.routing import Plan, Router, embedding_kind, explain, reads_embedding
from gateway.streaming import (
    DONE,
    ChunkRelay,
    SpendCap,
    aiter_list,
    close_quietly,
    error_event,
    opening_events,
    replay_chunks,
    with_new_identity,
)
from gateway.telemetry import NoTracing, Tracing
from gateway.tokens import TokenCounter
from policies.answer_check import AnswerCheck
from policies.base import Candidate

if TYPE_CHECKING:
    from cache.semantic import PromptEncoder

log = logging.getLogger("gateway.pipeline")
#: Characters of a prompt handed to the router's embedding (it reads at most its artifact's ``max_tokens``, <= 512).
_EMBED_MAX_CHARS = 4000

_VALIDATORS: dict[str, type[InferenceRequest]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}


@dataclass(slots=True)
class JSONResult:
    """A complete response."""

    body: dict[str, Any]
    headers: dict[str, str]
    status: int = 200


@dataclass(slots=True)
class StreamResult:
    """An SSE response; ``frames`` are ready-to-send bytes."""

    frames: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


Result = JSONResult | StreamResult


class Pipeline:
    """Runs requests through the stages; built once per app in its lifespan."""

    def __init__(
        self,
        *,
        settings: Settings,
        backends: dict[str, Backend],
        breakers: dict[str, CircuitBreaker],
        router: Router,
        counter: TokenCounter,
        metrics: Metrics,
        admission: Admission,
        cache: ResponseCache,
        recorder: Recorder,
        tracing: Tracing | None = None,
        router_encoder: PromptEncoder | None = None,
        answer_check: AnswerCheck | None = None,
    ) -> None:
        self.settings = settings
        #: the embedding worker an adapted router reads (the semantic cache's when it has one)
        self.router_encoder = router_encoder
        self.backends = backends
        self.breakers = breakers
        self.router = router
        self.counter = counter
        self.metrics = metrics
        self.admission = admission
        self.cache = cache
        self.recorder = recorder
        self.tracing: Tracing = tracing or NoTracing()
        #: The quality monitor, when ``quality.enabled`` (set by the runtime once it is built).
        self.monitor: QualityHook | None = None
        baseline = settings.ledger.baseline_model
        self.charges = Charges(router, counter, baseline_price(settings.model(baseline), baseline))
        self.cascade = Cascade(self, answer_check)
        # A model's answers are cached under the upstream model behind its name: pointing the name at another
        # model (or server) must not serve the old one's answers from a shared cache.
        self._cache_scopes = {m.name: f"{m.upstream_name}@{m.base_url or m.backend}" for m in settings.models}

    # -- entry points ---------------------------------------------------------------------------------

    def new_context(self, endpoint: Endpoint, headers: dict[str, str], request_id: str | None = None) -> RequestContext:
        """A context for a request that just arrived (before its body is read)."""
        rid = request_id or headers.get("x-request-id") or f"req-{next(_REQUEST_IDS)}"
        ctx = RequestContext(request_id=rid[:128], endpoint=endpoint, body={}, requested_model="", headers=headers)
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            ctx.api_key = auth[7:].strip() or None
        return ctx

    async def identify(self, ctx: RequestContext) -> None:
        """Stage 0, before the body is read: authenticate the caller once and carry it on ``ctx``.

        Raises:
            GatewayError: Unauthorized (recorded: the caller of :meth:`run` records it with :meth:`fail`).
        """
        self.tracing.request_started(ctx)
        await self.admission.identify(ctx)

    async def run(self, ctx: RequestContext, raw: bytes) -> Result:
        """Run stages 1-8 for a request :meth:`identify` admitted; raise :class:`GatewayError` for a clean
        error response (recorded already)."""
        try:
            self.parse(ctx, raw)
            await self.admission.admit(ctx)
            feats = await self.features(ctx.endpoint, ctx.body, len(raw))
            ctx.prompt_tokens_estimate = feats.billed_prompt_tokens
            ctx.cache_scope = self._cache_scopes.get(ctx.requested_model)
            if ctx.endpoint == "embeddings":
                return await self._embeddings(ctx, feats)
            cached = await self.cache.lookup(ctx)
            if cached is not None:
                return self._serve_cached(ctx, cached)
            started = perf_counter()
            vector = await self._routing_vector(ctx, feats)
            plan = self.router.plan(ctx.requested_model, feats, ctx.constraints, vector)
            self.metrics.decision_time.observe(perf_counter() - started)
            self._note_plan(ctx, plan)
            if plan.decision.policy == "cascade":
                ctx.extra["cascade_router_pick"] = router_pick(plan)
                return await self.cascade.run(ctx, plan, feats.prompt)
            return await self._call(ctx, plan)
        except GatewayError as err:
            await self.fail(ctx, err)
            raise
        except asyncio.CancelledError:
            # The client went away before the response started (or the server is stopping).
            if ctx.calling is not None:
                self.breakers[ctx.calling].release(ctx)
            self._mark_abandoned(ctx)
            self.charges.charge_abandoned(ctx)
            self._schedule_finish(ctx)
            raise
        except BaseException as exc:  # a bug: still one ledger row (a 500), then the app's handler logs it
            ctx.status_code = 500
            ctx.error_type = type(exc).__name__
            self._schedule_finish(ctx)
            raise

    async def fail(self, ctx: RequestContext, err: GatewayError) -> None:
        """Record a request that ends with an error response."""
        ctx.status_code = err.status
        ctx.error_type = type(err).__name__
        ctx.error_message = err.message
        await self._finish(ctx)

    async def abandoned(self, ctx: RequestContext) -> None:
        """Record a request whose client left before it could be answered (499)."""
        self._mark_abandoned(ctx)
        await self._finish(ctx)

    @staticmethod
    def _mark_abandoned(ctx: RequestContext) -> None:
        ctx.status_code = 499
        ctx.error_type = "ClientDisconnected"

    # -- stage 1: parse -------------------------------------------------------------------------------

    def parse(self, ctx: RequestContext, raw: bytes) -> None:
        """Stage 1: JSON, validation, constraints, and the streaming usage request."""
        body = load_json_object(raw)
        if isinstance(body.get("model"), str):
            ctx.requested_model = body["model"][:256]
        if isinstance(body.get("user"), str):
            ctx.user = body["user"][:256]
        request = validate(_VALIDATORS[ctx.endpoint], body)
        body.pop("gateway", None)  # ours: never forwarded
        ctx.constraints = Constraints.parse(ctx.headers, request.gateway)
        check_fan_out(ctx.endpoint, body, self.settings.server.max_n, self.settings.server.max_prompts)
        ctx.stream = bool(body.get("stream"))
        if ctx.stream:
            opts = body.get("stream_options") or {}
            ctx.client_wants_usage = bool(opts.get("include_usage"))
            body["stream_options"] = {**opts, "include_usage": True}
        ctx.body = body

    # -- stage 4/5 helpers ----------------------------------------------------------------------------

    async def features(self, endpoint: Endpoint, body: dict[str, Any], size: int) -> RequestFeatures:
        """Stage 3 for a body of ``size`` bytes: past ``server.offload_bytes`` in a thread (tiktoken releases the
        GIL), since counting a few MB of tokens takes seconds the event loop would serve no one else."""
        if size > self.settings.server.offload_bytes:
            return await asyncio.to_thread(extract_features, endpoint, body, self.counter)
        return extract_features(endpoint, body, self.counter)

    async def _routing_vector(self, ctx: RequestContext, feats: RequestFeatures) -> Any:
        """:meth:`_prompt_vector`, or None when the learned router was reloaded while it was computed: the
        vector is of the kind the old artifact reads, and the new one would score it as its own (both kinds are
        384 wide); its stand-in scores instead, for this request only."""
        estimator = self.router.estimator
        vector = await self._prompt_vector(ctx, feats)
        return vector if self.router.estimator is estimator else None

    async def _prompt_vector(self, ctx: RequestContext, feats: RequestFeatures) -> Any:
        """The routing prompt's vector when an adapted router decides this request, of the kind its artifact
        reads: for ``minilm`` the embedding the semantic cache computed, if any, else one from the router's worker
        thread (never on the loop), waited for at most ``router.embed_timeout_ms``; for ``minilm-static`` the
        static vector, computed here (~0.1 ms); None (the router's stand-in) when it is late, saturated, failed,
        or of another kind (during a reload)."""
        estimator = self.router.estimator
        if not reads_embedding(estimator) or not self.router.is_route(ctx.requested_model):
            return None
        vector, tokens = embedding_kind(estimator)
        encoder = self.router_encoder
        # the semantic cache's embedding is this vector when the router reads through the cache's own encoder
        shared = encoder is not None and encoder is getattr(self.cache, "encoder", None)
        if shared and ctx.prompt_vector is not None:
            return ctx.prompt_vector
        if encoder is None or encoder.vector != vector or encoder.max_tokens != tokens or not feats.prompt:
            return None
        result = None
        try:
            async with asyncio.timeout(self.settings.router.embed_timeout_ms / 1000.0):
                # characters beyond what the truncated embedding reads need not be tokenized
                result = await encoder.encode(feats.prompt[:_EMBED_MAX_CHARS])
        except (ValueError, RuntimeError, TimeoutError) as exc:
            self.metrics.cache_errors.labels("router_embed").inc()
            log.debug("router embedding unavailable: %s", exc)
        else:
            if result is None:  # the worker's queue is full
                self.metrics.cache_errors.labels("router_embed_busy").inc()
        if shared:
            ctx.prompt_vector = result
        return result

    def _note_plan(self, ctx: RequestContext, plan: Plan) -> None:
        d = plan.decision
        ctx.route = plan.route
        ctx.policy = d.policy
        ctx.reason = d.reason
        ctx.predicted_cost = d.winner.cost_usd
        ctx.degraded = plan.degraded
        self.metrics.child(self.metrics.decisions, plan.route or "-", d.policy, d.winner.name).inc()

    def _serve_cached(self, ctx: RequestContext, cached: CachedAnswer) -> Result:
        ctx.chosen_model = cached.original_model or str(cached.body.get("model") or ctx.requested_model)
        if ctx.requested_model in self.router.routes:
            ctx.route = ctx.requested_model
        ctx.cache_status = cached.status
        ctx.cache_score = cached.score
        ctx.reason = cached.reason or "served from cache"
        usage = cached.body.get("usage") or {}
        ctx.usage.prompt_tokens = usage_tokens(usage.get("prompt_tokens"))
        ctx.usage.completion_tokens = usage_tokens(usage.get("completion_tokens"))
        ctx.ttft_s = ctx.elapsed()
        body = with_new_identity(cached.body)
        model = str(body.get("model") or ctx.chosen_model)
        if ctx.stream:
            frames = replay_chunks(body, model, ctx.client_wants_usage)
            return StreamResult(self._finish_after(ctx, aiter_list(frames)), self._headers(ctx))
        self._schedule_finish(ctx)
        return JSONResult(body, self._headers(ctx))

    # -- stage 6: call (one attempt loop, streaming or not) ------------------------------------------

    async def _call(self, ctx: RequestContext, plan: Plan) -> Result:
        """Try the ranking in order until a candidate answers (the one attempt loop, streaming or not)."""
        last: UpstreamError | None = None
        reached: set[str] = set()  # backends the request may have reached: a POST is never sent there again
        for cand in self._attempt_order(plan):
            if cand.name in reached or (ctx.attempts and not self.breakers[cand.name].available()):
                continue  # a fallback whose breaker opened (or whose probe another request holds) since routing
            if ctx.attempts:
                await self._backoff(len(ctx.attempts))
            ctx.attempts.append(cand.name)
            ctx.predicted_cost = cand.cost_usd  # a stream's cost header is the prediction for the model answering
            if cand.name != ctx.attempts[0]:  # before the call: a complete answer is cached as it arrives
                ctx.degraded = f"fallback after {ctx.attempts[0]} failed"
            try:
                return await self._attempt(ctx, self.backends[cand.name], self.breakers[cand.name])
            except UpstreamError as err:
                self._attempt_failed(ctx, cand.name, err)
                self.charges.timed_out(ctx, cand.name, err)
                if err.reached:
                    reached.add(cand.name)
                last = err
                if not is_retryable(err):
                    raise
        assert last is not None
        raise AllCandidatesFailed(last, ctx.attempts)

    async def _attempt(self, ctx: RequestContext, backend: Backend, breaker: CircuitBreaker) -> Result:
        """One call: a complete answer, or a stream whose opening events arrived (checked before the first byte
        goes to the client, so the next candidate can still answer when a stream fails that early)."""
        breaker.before_call(ctx)
        t0 = ctx.elapsed()
        body = self._upstream_body(ctx, backend)
        if ctx.stream:
            with self.tracing.attempt(ctx, backend.name), in_flight(ctx, backend.name):
                stream = await backend.open_stream(ctx.path, body)
                try:
                    events = stream.events()
                    opening = await opening_events(events, backend)
                except BaseException:
                    await close_quietly(stream)
                    raise
            ctx.chosen_model = backend.name
            return StreamResult(self._relay(ctx, backend, breaker, stream, events, opening, t0), self._headers(ctx))
        with self.tracing.attempt(ctx, backend.name):
            with in_flight(ctx, backend.name):
                response = await backend.complete(ctx.path, body)
            check_not_cut(response.body, backend.name)  # a cut answer: the next candidate may answer whole
            breaker.record_success()
            ctx.chosen_model = backend.name
            return self._answer(ctx, backend, response, t0)

    def _answer(self, ctx: RequestContext, backend: Backend, response: UpstreamResponse, t0: float) -> JSONResult:
        """Stage 7 for a complete answer: the client's body, its usage, and what it teaches about the backend."""
        body = response.body
        body["model"] = backend.name
        self.charges.set_usage(ctx, body)
        self.charges.check_answer_cost(ctx, backend.name)
        ctx.finish_reason = first_finish_reason(body)
        backend.stats.observe(ttft_s=None, total_s=ctx.elapsed() - t0, completion_tokens=ctx.usage.completion_tokens)
        ctx.ttft_s = ctx.elapsed()
        self.keep_answer(ctx, body)
        self._schedule_finish(ctx)
        return JSONResult(body, self._headers(ctx))

    def keep_answer(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        """A complete answer to the cache, and to the quality monitor when it samples the request (whether the
        client gets it whole or, from a cascade, replayed as a stream)."""
        self.cache.store(ctx, body)
        if self.monitor is not None and self.monitor.wants(ctx):
            choices = body.get("choices") or [{}]
            ctx.extra[_MONITOR] = choice_text(choices[0]) if isinstance(choices[0], dict) else ""

    # -- stage 7: relay a stream ----------------------------------------------------------------------

    async def _relay(
        self,
        ctx: RequestContext,
        backend: Backend,
        breaker: CircuitBreaker,
        stream: UpstreamStream,
        events: AsyncIterator[bytes],
        opening: list[bytes],
        t0: float,
    ) -> AsyncIterator[bytes]:
        relay = ChunkRelay(ctx, backend.name, collect=self.cache.wants_stream(ctx))
        saw_done = False
        failed = False
        cap = ctx.spend_cap_usd
        if cap is not None:  # what a cascade already paid for answers the client never saw counts too
            cap -= self.charges.paid_attempts(ctx, timed_out=False)
        spend = None
        if cap is not None:
            price, margin = self.charges.price(backend.name), self.router.models[backend.name].token_margin
            spend = SpendCap(cap, price, ctx, self.counter, margin=margin)
        cut = False
        try:
            held = iter(opening)
            while True:
                data = next(held, None) or await anext(events, None)
                if data is None:
                    break
                if data == b"[DONE]":
                    saw_done = True
                    break
                out = relay.transform(data)
                if spend is not None:
                    spend.check(relay)
                if out is not None:
                    yield out
            relay.end(saw_done)  # no [DONE], or a choice without its finish_reason: a cut stream
            if not relay.usage_seen:
                relay.estimate_usage(self.counter)
                if ctx.client_wants_usage:
                    yield relay.usage_frame()
            yield DONE
        except UpstreamError as err:
            failed = True
            self.tracing.attempt_ended(ctx, err)
            self._attempt_failed(ctx, backend.name, err)
            ctx.status_code = 200  # the status line was sent; the error travels in the stream
            ctx.error_type = type(err).__name__
            ctx.error_message = err.message
            yield error_event(err)
        except BudgetExceeded as err:  # not the backend's fault: its breaker is untouched
            cut = True
            ctx.status_code = 200
            ctx.error_type = type(err).__name__
            ctx.error_message = err.message
            yield error_event(err)
        except (asyncio.CancelledError, GeneratorExit):
            failed = True
            breaker.release(ctx)  # the client left: no verdict on the backend
            ctx.error_type = "ClientDisconnected"
            ctx.status_code = 499
            raise
        finally:
            if not failed:
                breaker.record_success()
            relay.estimate_usage(self.counter)  # when the upstream reported none
            backend.stats.observe(
                ttft_s=None if ctx.ttft_s is None else ctx.ttft_s - t0,
                total_s=ctx.elapsed() - t0,
                completion_tokens=ctx.usage.completion_tokens,
            )
            if not failed and not cut and relay.collected is not None:
                self.cache.store_stream(ctx, relay.collected)
            self.tracing.attempt_ended(ctx)  # the failed ones ended above
            if not failed and self.monitor is not None and self.monitor.wants(ctx):
                ctx.extra[_MONITOR] = "".join(relay.text_parts)
            # Closing the upstream and recording run in their own task: a client disconnect cancels this
            # one again at every await (anyio's cancel scopes are level-triggered), which must not cost the
            # upstream cancellation or the ledger row.
            await asyncio.shield(run_in_background(self._end_stream(ctx, stream)))

    async def _end_stream(self, ctx: RequestContext, stream: UpstreamStream) -> None:
        await close_quietly(stream)
        await self._finish(ctx)

    # -- embeddings -----------------------------------------------------------------------------------

    async def _embeddings(self, ctx: RequestContext, feats: RequestFeatures) -> Result:
        spec = self.settings.model(ctx.requested_model)
        if spec is None and ctx.requested_model not in self.router.routes:
            raise NotFound(f"The model '{ctx.requested_model}' does not exist.", param="model")
        if spec is None or spec.mode != "embedding":
            what = "is a route of chat models" if spec is None else "does not serve embeddings"
            raise InvalidRequest(
                f"The model '{ctx.requested_model}' {what}.", param="model", code="model_not_embedding"
            )
        plan = self.router.plan_embeddings(spec.name, feats, ctx.constraints)  # a 400 for a constraint it fails
        ctx.chosen_model = spec.name
        ctx.policy = "explicit"
        cached = await self.cache.lookup(ctx)
        if cached is not None:
            return self._serve_cached(ctx, cached)
        ctx.chosen_model = None  # set again by the attempt that answers (the model, or one of its fallbacks)
        self._note_plan(ctx, plan)
        return await self._call(ctx, plan)

    # -- explain --------------------------------------------------------------------------------------

    async def explain(self, ctx: RequestContext, raw: bytes) -> dict[str, Any]:
        """Stages 1, 3 and 5 only, for ``gateway route --explain`` and ``/admin/route/explain``: the routing
        decision for a chat request body, with each candidate's predictions, the prompt's vector computed as for
        a request (an adapted router's stand-in told another story); no model is called."""
        self.parse(ctx, raw)
        feats = await self.features(ctx.endpoint, ctx.body, len(raw))
        vector = await self._routing_vector(ctx, feats)
        out = explain(self.router.plan(ctx.requested_model, feats, ctx.constraints, vector))
        out["prompt_tokens"] = feats.prompt_tokens
        return out

    # -- helpers --------------------------------------------------------------------------------------

    def _attempt_order(self, plan: Plan) -> list[Candidate]:
        """The ranking, repeated if short, cut to the retry budget."""
        ranking = plan.decision.ranking
        budget = self.settings.retry.max_attempts
        if len(ranking) >= budget:
            return ranking[:budget]
        return [ranking[i % len(ranking)] for i in range(budget)]

    async def _backoff(self, attempt: int) -> None:
        r = self.settings.retry
        delay = min(r.backoff_base_ms * (2 ** (attempt - 1)), r.backoff_max_ms) / 1000.0
        if delay > 0:
            await asyncio.sleep(delay)

    def _attempt_failed(self, ctx: RequestContext, name: str, err: UpstreamError) -> None:
        if not is_retryable(err):  # the client's error: nothing learnt about the backend
            self.breakers[name].release(ctx)
        else:
            self.breakers[name].record_failure()
            self.backends[name].stats.last_error = f"{err.message} ({err.detail})" if err.detail else err.message
            self.metrics.fallbacks.labels(name).inc()
        if err.detail:
            log.warning("attempt on %s failed: %s (%s)", name, err.message, err.detail)
        else:
            log.warning("attempt on %s failed: %s", name, err.message)

    def _upstream_body(self, ctx: RequestContext, backend: Backend) -> dict[str, Any]:
        spec = self.settings.model(backend.name)
        body = dict(ctx.body)
        body["model"] = spec.upstream_name if spec else backend.name
        return body

    def _headers(self, ctx: RequestContext) -> dict[str, str]:
        if ctx.stream:
            return gateway_headers(ctx, self.charges.stream_estimate(ctx))
        self.charges.charge(ctx)
        return gateway_headers(ctx, ctx.cost_usd)

    async def _finish_after(self, ctx: RequestContext, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Relay ``frames`` (a replayed answer: a cache hit's, a cascade's), then stage 8; a client that leaves
        during the replay is recorded as gone (499), as during a relayed stream."""
        try:
            async for f in frames:
                yield f
        except (asyncio.CancelledError, GeneratorExit):
            self._mark_abandoned(ctx)
            raise
        finally:
            await self._finish(ctx)

    def _schedule_finish(self, ctx: RequestContext) -> None:
        # Non-streaming: the body is ready; account without delaying the response.
        run_in_background(self._finish(ctx))

    async def _finish(self, ctx: RequestContext) -> None:
        """Stage 8, exactly once per request: cost, settle, ledger, metrics."""
        if ctx.total_s is not None:
            return
        ctx.total_s = ctx.elapsed()
        if ctx.cost_usd == 0:
            self.charges.charge(ctx)
        try:
            await self.admission.settle(ctx)
        finally:
            self.recorder.record(ctx)
            self.metrics.observe(ctx)
            self.tracing.request_ended(ctx)
            answer = ctx.extra.pop(_MONITOR, None)
            if answer is not None and self.monitor is not None:
                self.monitor.submit(ctx, answer)  # the response is complete: judged off the request path


_MONITOR = "quality_answer"  # ctx.extra: the answer of a request the quality monitor sampled
# Unique per process start (random prefix) and cheap per request (a counter), unlike uuid4.
_REQUEST_IDS = (f"{_prefix}{n:08x}" for _prefix in [secrets.token_hex(6)] for n in itertools.count())


__all__ = ["JSONResult", "Pipeline", "Result", "StreamResult"]
