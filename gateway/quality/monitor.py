"""The quality monitor: a sampled share of each route's answers judged against the route's strongest model.

After a request has been answered (stage 8), :meth:`QualityMonitor.wants` decides whether it is sampled and
:meth:`QualityMonitor.submit` puts it on a bounded queue (full: the sample is dropped and counted). Workers,
entirely off the request path, send the same request to the route's **reference** (its strongest candidate),
ask the **judge** (``quality.judge_model``, default the reference) to compare the two answers in both orders
(:mod:`gateway.quality.pairwise`), and store the verdict in ``gw_quality_verdicts``.

The same workers, client and budget judge the semantic cache's sampled decisions (the cache's check queue,
run by :class:`cache.judge.HitChecker`): one sampling and judging mechanism for both.

**Eligible** (docs/quality.md says why): chat completions that named a route, answered (status 200, no
error) by a model other than the route's reference, not served from the cache (a semantic hit is checked by
the semantic check instead), without tools or functions (a tool call is judged by what the tool does, which
the judge cannot see), with one choice, and not ``cache-control: no-store`` (the prompt is stored with the
verdict). Streamed answers are eligible (the relay already collects their text); sampled temperatures too
(the reference is asked with the same parameters, so the verdict compares one draw of each).

**Money**: every call the monitor makes is a ledger row with ``policy = 'monitor'`` and no key, so it is never
charged to a client's key or budget; ``quality.daily_budget_usd`` caps the day's total, in Redis for every process
when Redis is configured (:mod:`gateway.quality.spend`): a sample reserves its worst case before its first call,
each call settles its actual cost, and the request path only reads a local copy of the figures.
**Failures** (a dead reference or judge, a timeout, an unusable verdict) only drop the sample: the monitor never
touches a client's request, the routing breakers or the backends' latency statistics.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError

from backends import Backend
from cache.directives import cache_control
from cache.judge import Check, HitChecker, Messages, answer_text, judge_messages
from gateway.accounting.quality_tables import verdicts
from gateway.config import QualitySettings, Settings
from gateway.context import RequestContext, usage_tokens
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.features import extract_features
from gateway.hooks import Recorder
from gateway.quality.gauges import QualityGauges
from gateway.quality.pairwise import Outcome, Verdict, clip, combine, pair_messages, parse_pair_verdict
from gateway.quality.prompts import conversation, has_media, prompt_bound
from gateway.quality.spend import DailySpend, Reservation, from_pico, monitoring_spend_today, to_pico, utc_day
from gateway.routing import Router
from gateway.tokens import TokenCounter

#: What the client's body says to the gateway or its provider, not to the model: the reference is not sent it.
_NOT_FOR_THE_REFERENCE = frozenset({"stream", "stream_options", "user", "store", "metadata", "gateway"})


def asks_again_safely(body: dict[str, Any]) -> bool:
    """Whether a request may be sent again to the reference and judged: one answer (``n``), no tools (asking again
    could suggest side-effecting calls), text only (the judge reads text). The sampled requests' rule and the
    semantic cache's checks' alike."""
    if body.get("tools") or body.get("functions") or body.get("n") not in (None, 1):
        return False
    return not has_media(body.get("messages"))


if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from cache.learn import Learner
    from gateway.quality.adapting import BackgroundAdapter

log = logging.getLogger("gateway.quality")

#: What a failed sample can raise: upstream errors, transport, timeouts, bad bodies, the database.
_SAMPLE_ERRORS = (UpstreamError, OSError, TimeoutError, ValueError, KeyError, SQLAlchemyError)
#: Outcomes counted in ``gateway_quality_samples_total`` (a fixed set); ``dropped_budget_unavailable``: the budget's
#: store (Redis) did not answer, so no sample may start.
OUTCOMES = ("judged", "no_verdict", "failed", "dropped_queue_full", "dropped_budget", "dropped_budget_unavailable")
#: How often a sample refused while the day's spend is under the budget asks again (samples in flight settling).
_ROOM_WAIT_S = 0.2
#: The window the Prometheus gauges summarise.
GAUGE_WINDOW_S = 7 * 86400


@dataclass(slots=True)
class Sample:
    """One answered request to judge against its route's reference."""

    request_id: str
    route: str
    model: str
    reference: str
    judge: str
    body: dict[str, Any]
    answer: str
    ts_ms: int
    key_id: str | None


@dataclass(slots=True)
class _Tally:
    """What one sample (or semantic check) spent, and on what."""

    request_id: str
    route: str
    reference_usd: Decimal = Decimal(0)
    judge_usd: Decimal = Decimal(0)
    reference_model: str | None = None
    judge_model: str | None = None
    calls: int = field(default=0)
    #: What the sample holds of the day's budget (every call grows it to its bound first, then settles).
    reservation: Reservation | None = None


_TALLY: contextvars.ContextVar[_Tally] = contextvars.ContextVar("quality_tally")


def strongest(router: Router, route: str) -> str | None:
    """The route's reference: its candidate of highest quality (the dearer one on a tie)."""
    spec = router.routes.get(route)
    members = [router.models[m] for m in (spec.models or []) if m in router.models] if spec else []
    if not members:
        return None
    best = max(members, key=lambda m: (m.quality, m.price.now().cost(1000, 1000)))
    return best.name


class QualityMonitor:
    """Samples answered requests and judges them off the request path (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        backends: dict[str, Backend],
        router: Router,
        recorder: Recorder,
        counter: TokenCounter,
        engine: AsyncEngine | None,
        registry: Any,
        learner: Learner | None = None,
        check_queue: asyncio.Queue[Check] | None = None,
        rng: random.Random | None = None,
        spend: DailySpend | None = None,
    ) -> None:
        self.settings: QualitySettings = settings.quality
        self.backends = backends
        self.router = router
        self.recorder = recorder
        self.counter = counter
        self.engine = engine
        #: The day's budget: in Redis, shared by every process, when the factory was given one; else this process's.
        self.spend = spend if spend is not None else DailySpend(self.settings.daily_budget_usd)
        self._synced_at = -float("inf")  # monotonic time the ledger's figure was last read
        self.reference: dict[str, str] = {}
        self.rates: dict[str, float] = {}
        #: routes whose data stays where it was served (their own ``quality_sample_rate: 0``): no sample, no check
        self.local_only = frozenset(n for n, spec in router.routes.items() if spec.quality_sample_rate == 0)
        for name, spec in router.routes.items():
            ref = strongest(router, name)
            if ref is not None:
                self.reference[name] = ref
                rate = spec.quality_sample_rate
                self.rates[name] = self.settings.sample_rate if rate is None else rate
        self.queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=self.settings.queue_size)
        self.samples = Counter(
            "gateway_quality_samples", "Quality monitor samples by outcome", ["outcome"], registry=registry
        )
        for outcome in OUTCOMES:
            self.samples.labels(outcome)
        self.gauges = QualityGauges(registry)
        self._learner = learner
        self._check_queue = check_queue
        self._checker: HitChecker | None = None
        self._rng = rng or random.Random()
        self._tasks: list[asyncio.Task[None]] = []
        self.in_progress = 0
        #: Opt-in background adaptation of the router (``quality.adapt_every_labels``), set by the factory.
        self.adapter: BackgroundAdapter | None = None

    # -- the request path (both calls are cheap and never raise) ------------------------------------------

    def wants(self, ctx: RequestContext) -> bool:
        """Whether to sample ``ctx`` (eligible, drawn at the route's rate, budget left)."""
        route = ctx.route
        if route is None or ctx.endpoint != "chat" or ctx.error_type is not None or ctx.status_code != 200:
            return False
        reference = self.reference.get(route)
        if reference is None or ctx.chosen_model in (None, reference) or ctx.cache_hit:
            return False
        rate = self.rates.get(route, 0.0)
        body = ctx.body
        if rate <= 0 or not asks_again_safely(body):
            return False
        if "no-store" in cache_control(ctx.headers) or body.get("store") is False or ctx.extra.get("store") is False:
            return False  # the client asked that nothing be kept: the prompt is stored with the verdict
        if ctx.usage.prompt_tokens > self.settings.max_prompt_tokens:
            return False  # a sample's cost stays bounded
        if self._rng.random() >= rate:
            return False
        blocked = self.spend.blocked()  # a local figure: the request path never waits on Redis or the database
        if blocked is not None:
            self.samples.labels("dropped_budget" if blocked == "budget" else "dropped_budget_unavailable").inc()
            return False
        return True

    def submit(self, ctx: RequestContext, answer: str) -> None:
        """Queue a sampled request whose answer was ``answer`` (dropped when the queue is full)."""
        assert ctx.route is not None and ctx.chosen_model is not None
        body = {k: v for k, v in ctx.body.items() if k not in _NOT_FOR_THE_REFERENCE}
        sample = Sample(
            ctx.request_id,
            ctx.route,
            ctx.chosen_model,
            self.reference[ctx.route],
            self.settings.judge_model or self.reference[ctx.route],
            body,
            answer,
            int(ctx.started_wall * 1000),
            ctx.key_id,
        )
        try:
            self.queue.put_nowait(sample)
        except asyncio.QueueFull:
            self.samples.labels("dropped_queue_full").inc()

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read today's spend, start the workers (and the semantic hit checker)."""
        if self.engine is not None:
            try:
                await self._sync_spend(self.engine)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("quality monitor: database unavailable at start-up (%s); verdicts may be lost", exc)
        for i in range(self.settings.concurrency):
            self._tasks.append(asyncio.get_running_loop().create_task(self._work(), name=f"quality-monitor-{i}"))
        if self._learner is not None and self._check_queue is not None:
            self._checker = _SemanticChecker(self, self._check_queue, self._learner)
            self._checker.start()
        if self.engine is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._refresh_loop(), name="quality-gauges"))

    async def aclose(self) -> None:
        """Stop the workers (samples still queued are dropped)."""
        if self.adapter is not None:
            await self.adapter.aclose()
        if self._checker is not None:
            await self._checker.aclose()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.spend.aclose()

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh_gauges()
            except (SQLAlchemyError, OSError) as exc:
                log.debug("quality gauges not refreshed: %r", exc)
            await asyncio.sleep(self.settings.report_interval_seconds)

    async def refresh_gauges(self) -> None:
        """Recompute the Prometheus gauges from the last :data:`GAUGE_WINDOW_S` of verdicts."""
        from gateway.quality.report import quality_report

        assert self.engine is not None
        today = await self._sync_spend(self.engine)  # every process's monitoring spend today, as the ledger has it
        start = int((time.time() - GAUGE_WINDOW_S) * 1000)
        rows = await quality_report(self.engine, "route", reference=self.reference, start_ms=start)
        self.gauges.update([r for r in rows if r["route"] in self.reference], today)

    async def _sync_spend(self, engine: AsyncEngine) -> Decimal:
        """Read today's monitoring spend from the ledger (every process's rows) into the budget; returns it."""
        day, found = await monitoring_spend_today(engine)
        self._synced_at = time.monotonic()
        await self.spend.sync(day, found)
        return found

    async def _admit(self, name: str, worst_usd: Decimal, *, wait: bool = True) -> Reservation | None:
        """Reserve ``worst_usd`` of the day's budget for a sample about to start; None (counted) when none may.

        Refused while the day's spend itself is under the budget (the rest is held by samples in flight, here or in
        another process), a sample waits for them to settle when ``wait``, at most ``quality.timeout_seconds``
        (a sample in flight ends within that). Counting on its own (no Redis, or the only process while Redis is down),
        the ledger's figure is first re-read when this process's is older than ``quality.budget_sync_seconds``."""
        deadline = time.monotonic() + self.settings.timeout_seconds
        blocked = self.spend.blocked()
        while blocked is None:
            if self.spend.counts_locally() and self.engine is not None:
                if time.monotonic() - self._synced_at >= self.settings.budget_sync_seconds:
                    try:
                        await self._sync_spend(self.engine)
                    except (SQLAlchemyError, OSError) as exc:
                        log.debug("quality budget not synced from the ledger: %r", exc)
            try:
                reservation = await self.spend.reserve(name, worst_usd)
            except OSError:  # Redis: logged once per outage by the store
                blocked = "unavailable"
                break
            if reservation is not None:
                return reservation
            if self.spend.exhausted() or not wait or time.monotonic() >= deadline:
                blocked = "budget"
                break
            await asyncio.sleep(_ROOM_WAIT_S)  # the samples in flight hold the rest: wait for them to settle
            blocked = self.spend.blocked()
        if wait:  # a sample (a semantic check is not one)
            self.samples.labels("dropped_budget" if blocked == "budget" else "dropped_budget_unavailable").inc()
        return None

    # -- worst cases: what a call, a sample or a semantic check may cost at most ----------------------------

    def _bound(self, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
        price = self.router.models[model].price
        return max(
            price.static.cost(prompt_tokens, completion_tokens), price.now().cost(prompt_tokens, completion_tokens)
        )

    def _expected(self, body: dict[str, Any]) -> int:
        """The reference answer's length limit for the request ``body``: the client's, at most
        ``quality.reference_max_tokens``."""
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        cap = self.settings.reference_max_tokens
        return min(limit, cap) if isinstance(limit, int) and limit > 0 else cap

    def _answer_tokens(self, expected: int) -> int:
        """At most how many tokens a reference answer of ``expected`` tokens adds to a judge's prompt (before the
        answer exists: each judge call grows the reservation to its exact bound if this falls short)."""
        return min(2 * expected, self.settings.max_answer_chars * 4 // 3) + 16

    def _sample_bound(self, s: Sample, asked: str, served: str) -> Decimal:
        expected = self._expected(s.body)
        reference = self._bound(s.reference, prompt_bound(s.body.get("messages")), expected)
        judge_prompt = prompt_bound(pair_messages(asked, served, "")) + self._answer_tokens(expected)
        return reference + 2 * self._bound(s.judge, judge_prompt, self.settings.judge_max_tokens)

    def _check_bound(self, check: Check, reference: str, judge: str) -> Decimal:
        out = Decimal(0)
        extra = 0
        if check.reference is None:
            expected = self._expected(check.request)
            out += self._bound(reference, prompt_bound(check.request.get("messages")), expected)
            extra = self._answer_tokens(expected)
        messages = judge_messages(check.question, check.cached_question, check.cached_answer, check.reference or "")
        return out + self._bound(judge, prompt_bound(messages) + extra, self.settings.judge_max_tokens)

    # -- the workers --------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            sample = await self.queue.get()
            self.in_progress += 1
            reservation = None
            try:
                question = extract_features("chat", sample.body, self.counter).prompt
                limit = self.settings.max_answer_chars
                asked = clip(conversation(sample.body.get("messages"), question), limit)
                worst = self._sample_bound(sample, asked, clip(sample.answer, limit))
                # the day's budget, checked (and the worst case reserved) before the sample's first call: a sample
                # refused is counted once, as dropped_budget, not also as no_verdict
                reservation = await self._admit(sample.request_id, worst)
                if reservation is None:
                    continue
                async with asyncio.timeout(self.settings.timeout_seconds):
                    outcome = await self.judge_sample(sample, reservation)
                self.samples.labels("judged" if outcome is not None else "no_verdict").inc()
            except _SAMPLE_ERRORS as exc:
                self.samples.labels("failed").inc()
                log.warning("quality sample of %s failed: %r", sample.request_id, exc)
            finally:
                if reservation is not None:
                    await self.spend.release(reservation)
                self.in_progress -= 1
                self.queue.task_done()

    async def judge_sample(self, s: Sample, reservation: Reservation | None = None) -> Outcome | None:
        """Ask the reference, judge both orders, store the verdict; None when the judge gave no verdict. The
        worker checks the day's budget and reserves the sample's worst case (``reservation``) before it calls
        this; without one, each call reserves its own bound."""
        tally = _Tally(s.request_id, s.route, reference_model=s.reference, judge_model=s.judge)
        tally.reservation = reservation
        token = _TALLY.set(tally)
        try:
            question = extract_features("chat", s.body, self.counter).prompt
            limit = self.settings.max_answer_chars
            served = clip(s.answer, limit)
            asked = clip(conversation(s.body.get("messages"), question), limit)
            reference = await self.reference_answer(s.reference, s.body)
            ref = clip(reference, limit)
            first = parse_pair_verdict(await self.chat(s.judge, pair_messages(asked, served, ref)))
            second = parse_pair_verdict(await self.chat(s.judge, pair_messages(asked, ref, served)))
        finally:
            _TALLY.reset(token)
        if first is None or second is None:
            return None
        outcome = combine(first, second)
        await self._store(s, question, outcome, first, second, tally)
        return outcome

    # -- calls (the judge client shared with the semantic checks) -----------------------------------------

    async def reference_answer(self, model: str, body: dict[str, Any]) -> str:
        """``model``'s answer to the request ``body`` (a shadow call, recorded as monitoring)."""
        spec = self.router.models[model].spec
        expected = self._expected(body)
        request = {**body, "model": spec.upstream_name}
        request.pop("max_completion_tokens", None)
        request["max_tokens"] = expected  # one sample's cost stays bounded, whatever the client asked for
        answer = await self._complete(model, request, "reference", body.get("messages"), expected)
        return answer_text(answer)

    async def chat(self, model: str, messages: Messages) -> str:
        """One judge completion by ``model`` (temperature 0), recorded as monitoring."""
        spec = self.router.models[model].spec
        body = {
            "model": spec.upstream_name,
            "messages": messages,
            "temperature": 0,
            "max_tokens": self.settings.judge_max_tokens,
        }
        answer = await self._complete(model, body, "judge", messages, self.settings.judge_max_tokens)
        return answer_text(answer)

    async def _complete(
        self, model: str, body: dict[str, Any], role: str, messages: Any, expected: int
    ) -> dict[str, Any]:
        """``model``'s complete answer to ``body``, recorded as monitoring. A call cut short after it reached the
        upstream (the sample's ``timeout_seconds``, or the upstream's own timeout) is recorded too, estimated: the
        prompt and ``expected`` completion tokens, which a hosted API generates and bills whoever still waits
        (the day's budget would otherwise not see it).

        The budget: the call's bound (its prompt at about 3 bytes a token, and ``expected`` completion tokens, at
        the model's dearest price) is held first, by the sample's reservation (grown when short) or, outside a
        sample, by one of its own; its actual cost is settled into the day's spend once its ledger row is queued
        (the row first: a sample cancelled by its timeout while Redis answers still has its ledger row)."""
        tally = _TALLY.get(None)
        bound = self._bound(model, prompt_bound(messages), expected)
        reservation = tally.reservation if tally is not None else None
        own = reservation is None
        if reservation is None:
            reservation = await self.spend.reserve(f"{model}:{role}", bound, check=False)
            assert reservation is not None  # never refused without the check
        elif reservation.held < to_pico(bound):
            await self.spend.grow(reservation, bound - from_pico(reservation.held))
        started = time.perf_counter()
        try:
            try:
                response = await self.backends[model].complete("/chat/completions", body)
            except (asyncio.CancelledError, UpstreamTimeout) as exc:
                if not isinstance(exc, UpstreamTimeout) or exc.reached:
                    prompt = self.counter.count(str(messages or ""))
                    cost = self._record(model, role, prompt, expected, True, time.perf_counter() - started)
                    await self.spend.settle(reservation, bound, cost)
                raise
            prompt, completion, estimated = self._usage(response.body, messages)
            cost = self._record(model, role, prompt, completion, estimated, time.perf_counter() - started)
            await self.spend.settle(reservation, bound, cost)
        finally:
            if own:
                await self.spend.release(reservation)
        return response.body

    def _usage(self, body: dict[str, Any], messages: Any) -> tuple[int, int, bool]:
        """The prompt and completion tokens of one monitoring call's answer ``body`` (counted when it reports
        none), and whether they were counted."""
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        assert isinstance(usage, dict)
        prompt = usage_tokens(usage.get("prompt_tokens"))
        completion = usage_tokens(usage.get("completion_tokens"))
        estimated = not usage
        if estimated:
            prompt = self.counter.count(str(messages or ""))
            completion = self.counter.count(answer_text(body))
        return prompt, completion, estimated

    def _cost(self, model: str, prompt: int, completion: int) -> Decimal:
        return self.router.models[model].price.now().cost(prompt, completion)

    def _record(self, model: str, role: str, prompt: int, completion: int, estimated: bool, seconds: float) -> Decimal:
        """Add one monitoring call to the current tally and write its ledger row; returns its cost (the caller
        settles it into the day's budget)."""
        cost = self._cost(model, prompt, completion)
        tally = _TALLY.get(None)
        request_id = "monitor"
        route: str | None = None
        if tally is not None:
            tally.calls += 1
            request_id, route = f"{tally.request_id}:q{tally.calls}", tally.route
            if role == "reference":
                tally.reference_usd += cost
            else:
                tally.judge_usd += cost
        ctx = RequestContext(request_id=request_id[:128], endpoint="chat", body={}, requested_model=model)
        ctx.route, ctx.policy, ctx.chosen_model = route, "monitor", model
        ctx.reason = f"quality monitor: {role}"
        ctx.attempts.append(model)
        ctx.usage.prompt_tokens, ctx.usage.completion_tokens, ctx.usage.estimated = prompt, completion, estimated
        # Monitoring saves nothing: its cost counts against the savings, never against a client's key.
        ctx.cost_usd, ctx.saved_usd = cost, -cost
        ctx.total_s = seconds  # the call's own duration: the model's latency figures include monitoring calls
        self.recorder.record(ctx)
        return cost

    async def _store(
        self, s: Sample, question: str, outcome: Outcome, first: Verdict, second: Verdict, tally: _Tally
    ) -> None:
        await self._insert(
            {
                "ts_ms": s.ts_ms,
                "day": utc_day(time.time()),
                "request_id": s.request_id[:128],
                "kind": "pairwise",
                "route": s.route,
                "model": s.model,
                "reference_model": s.reference,
                "judge_model": s.judge,
                "verdict": outcome,
                "served": True,
                "first_order": first,
                "second_order": second,
                "score": None,
                "prompt": question,
                "key_id": s.key_id,
                "reference_cost_usd": tally.reference_usd,
                "judge_cost_usd": tally.judge_usd,
            }
        )

    async def _insert(self, row: dict[str, Any]) -> None:
        if self.engine is None:
            return
        async with self.engine.begin() as conn:
            await conn.execute(verdicts.insert(), [row])

    # -- semantic checks ----------------------------------------------------------------------------------

    async def store_semantic(self, check: Check, correct: bool, tally: _Tally) -> None:
        """Store the verdict on a semantic cache decision."""
        await self._insert(
            {
                "ts_ms": int(time.time() * 1000),
                "day": utc_day(time.time()),
                "request_id": check.hit_id,
                "kind": "semantic",
                "route": check.route,
                "model": None,
                "reference_model": tally.reference_model,
                "judge_model": tally.judge_model,
                "verdict": "correct" if correct else "wrong",
                "served": check.served,
                "first_order": None,
                "second_order": None,
                "score": check.score,
                "prompt": check.question,
                "key_id": None,
                "reference_cost_usd": tally.reference_usd,
                "judge_cost_usd": tally.judge_usd,
            }
        )


class _SemanticChecker(HitChecker):
    """The cache's hit checker, calling through the monitor (its client, its budget, its ledger rows)."""

    def __init__(self, monitor: QualityMonitor, queue: asyncio.Queue[Check], learner: Learner) -> None:
        self.monitor = monitor
        settings = monitor.settings
        super().__init__(queue, learner, self._chat, self._shadow, concurrency=1, timeout_s=settings.timeout_seconds)

    def _route_models(self) -> tuple[str, str]:
        tally = _TALLY.get()
        reference = self.monitor.reference[tally.route]
        return reference, self.monitor.settings.judge_model or reference

    async def _chat(self, messages: Messages) -> str:
        judge = self._route_models()[1]
        _TALLY.get().judge_model = judge
        return await self.monitor.chat(judge, messages)

    async def _shadow(self, request: dict[str, Any]) -> str:
        reference = self._route_models()[0]
        _TALLY.get().reference_model = reference
        body = {k: v for k, v in request.items() if k not in _NOT_FOR_THE_REFERENCE}
        return await self.monitor.reference_answer(reference, body)

    async def run_one(self, check: Check) -> bool | None:
        """Judge one decision through the monitor (its worst case reserved first, as a sample's), then store the
        verdict beside the pairwise ones."""
        monitor = self.monitor
        reference = monitor.reference.get(check.route)
        # a route whose data stays where it was served sends no check either; nor a request not to be asked again
        if reference is None or check.route in monitor.local_only or not asks_again_safely(check.request):
            return None
        judge = monitor.settings.judge_model or reference
        reservation = await monitor._admit(check.hit_id, monitor._check_bound(check, reference, judge), wait=False)
        if reservation is None:
            return None
        tally = _Tally(check.hit_id, check.route, reservation=reservation)
        token = _TALLY.set(tally)
        try:
            verdict = await super().run_one(check)
            if verdict is not None:
                await monitor.store_semantic(check, verdict, tally)
        except _SAMPLE_ERRORS as exc:  # a dead judge or reference: this check has no verdict
            log.warning("semantic hit check %s failed: %r", check.hit_id, exc)
            return None
        finally:
            _TALLY.reset(token)
            await monitor.spend.release(reservation)
        return verdict
