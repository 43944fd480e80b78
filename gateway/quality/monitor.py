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
charged to a client's key or budget; ``quality.daily_budget_usd`` caps the day's total (:class:`DailySpend`).
**Failures** (a dead reference or judge, a timeout, an unusable verdict) only drop the sample: the monitor never
touches a client's request, the routing breakers or the backends' latency statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from backends import Backend
from cache.directives import cache_control
from cache.judge import Check, HitChecker, Messages, answer_text
from gateway.accounting.schema import ledger
from gateway.config import QualitySettings, Settings
from gateway.context import RequestContext
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.features import content_text, extract_features
from gateway.hooks import Recorder
from gateway.quality.pairwise import Outcome, Verdict, clip, combine, pair_messages, parse_pair_verdict
from gateway.quality.spend import DailySpend, utc_day
from gateway.quality.tables import verdicts
from gateway.routing import Router
from gateway.tokens import TokenCounter

#: What the client's body says to the gateway or its provider, not to the model: the reference is not sent it.
_NOT_FOR_THE_REFERENCE = frozenset({"stream", "stream_options", "user", "store", "metadata", "gateway"})


def _has_media(messages: Any) -> bool:
    """Whether any message carries an image or audio part (the judge reads text only)."""
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") not in (None, "text") for p in content
        ):
            return True
    return False


def conversation(messages: Any, question: str) -> str:
    """What the judge is shown as the user's question: ``question`` (the last user message) alone, or, when the
    request had a system prompt or earlier turns, those too, so an answer is judged in its context."""
    if not isinstance(messages, list) or len(messages) < 2:
        return question
    lines: list[str] = []
    for message in messages[:-1]:
        if not isinstance(message, dict):
            continue
        content, _ = content_text(message.get("content"))
        if content:
            lines.append(f"{str(message.get('role', 'user')).capitalize()}: {content}")
    if not lines:
        return question
    return "[Conversation so far]\n" + "\n".join(lines) + f"\n\n[Last user message]\n{question}"


if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from cache.learn import Learner
    from gateway.quality.adapting import BackgroundAdapter

log = logging.getLogger("gateway.quality")

#: What a failed sample can raise: upstream errors, transport, timeouts, bad bodies, the database.
_SAMPLE_ERRORS = (UpstreamError, OSError, TimeoutError, ValueError, KeyError, SQLAlchemyError)
#: Outcomes counted in ``gateway_quality_samples_total`` (a fixed set).
OUTCOMES = ("judged", "no_verdict", "failed", "dropped_queue_full", "dropped_budget")
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
    ) -> None:
        self.settings: QualitySettings = settings.quality
        self.backends = backends
        self.router = router
        self.recorder = recorder
        self.counter = counter
        self.engine = engine
        self.spend = DailySpend(self.settings.daily_budget_usd)
        self.reference: dict[str, str] = {}
        self.rates: dict[str, float] = {}
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
        self.gauges = _Gauges(registry)
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
        if rate <= 0 or body.get("tools") or body.get("functions") or body.get("n") not in (None, 1):
            return False
        if "no-store" in cache_control(ctx.headers) or body.get("store") is False or ctx.extra.get("store") is False:
            return False  # the client asked that nothing be kept: the prompt is stored with the verdict
        if ctx.usage.prompt_tokens > self.settings.max_prompt_tokens or _has_media(body.get("messages")):
            return False  # a sample's cost stays bounded; the judge reads text only
        if self._rng.random() >= rate:
            return False
        if self.spend.exhausted():
            self.samples.labels("dropped_budget").inc()
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
                await self._load_spend(self.engine)
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
        await self._load_spend(self.engine)  # other replicas' monitoring spend today, as the ledger has it
        start = int((time.time() - GAUGE_WINDOW_S) * 1000)
        rows = await quality_report(self.engine, "route", reference=self.reference, start_ms=start)
        self.gauges.update([r for r in rows if r["route"] in self.reference], self.spend.spent_usd)

    async def _load_spend(self, engine: AsyncEngine) -> None:
        now = time.time()
        day = utc_day(now)
        day_start_ms = int(now // 86400 * 86400 * 1000)  # the UTC day's first millisecond
        async with engine.connect() as conn:
            # By ts_ms, which is indexed (the day column's index went in revision 0004): run every
            # report_interval_seconds on each replica, a filter on ``day`` read the whole ledger.
            found = await conn.scalar(
                select(func.sum(ledger.c.cost_usd)).where(ledger.c.ts_ms >= day_start_ms, ledger.c.policy == "monitor")
            )
        self.spend.load(day, Decimal(found or 0))

    # -- the workers --------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            sample = await self.queue.get()
            self.in_progress += 1
            try:
                if self.spend.exhausted():  # counted once, as dropped_budget, not also as no_verdict
                    self.samples.labels("dropped_budget").inc()
                    continue
                async with asyncio.timeout(self.settings.timeout_seconds):
                    outcome = await self.judge_sample(sample)
                self.samples.labels("judged" if outcome is not None else "no_verdict").inc()
            except _SAMPLE_ERRORS as exc:
                self.samples.labels("failed").inc()
                log.warning("quality sample of %s failed: %r", sample.request_id, exc)
            finally:
                self.in_progress -= 1
                self.queue.task_done()

    async def judge_sample(self, s: Sample) -> Outcome | None:
        """Ask the reference, judge both orders, store the verdict; None when the judge gave no verdict (the
        worker checks the day's budget before it calls this)."""
        tally = _Tally(s.request_id, s.route, reference_model=s.reference, judge_model=s.judge)
        token = _TALLY.set(tally)
        try:
            reference = await self.reference_answer(s.reference, s.body)
            question = extract_features("chat", s.body, self.counter).prompt
            limit = self.settings.max_answer_chars
            served, ref = clip(s.answer, limit), clip(reference, limit)
            asked = clip(conversation(s.body.get("messages"), question), limit)
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
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        cap = self.settings.reference_max_tokens
        expected = min(limit, cap) if isinstance(limit, int) and limit > 0 else cap
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
        (the day's budget would otherwise not see it)."""
        started = time.perf_counter()
        try:
            response = await self.backends[model].complete("/chat/completions", body)
        except (asyncio.CancelledError, UpstreamTimeout) as exc:
            if not isinstance(exc, UpstreamTimeout) or exc.reached:
                prompt = self.counter.count(str(messages or ""))
                self._record(model, role, prompt, expected, True, time.perf_counter() - started)
            raise
        self._account(model, response.body, role, messages, time.perf_counter() - started)
        return response.body

    def _account(self, model: str, body: dict[str, Any], role: str, messages: Any, seconds: float) -> None:
        """Price one monitoring call from its answer ``body`` (:meth:`_record`)."""
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        assert isinstance(usage, dict)
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        estimated = not usage
        if estimated:
            prompt = self.counter.count(str(messages or ""))
            completion = self.counter.count(answer_text(body))
        self._record(model, role, prompt, completion, estimated, seconds)

    def _record(self, model: str, role: str, prompt: int, completion: int, estimated: bool, seconds: float) -> None:
        """Add one monitoring call to today's spend and the current tally, and write its ledger row."""
        cost = self.router.models[model].price.now().cost(prompt, completion)
        self.spend.add(cost)
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


class _Gauges:
    """The report's figures as Prometheus gauges; the ``route`` label only takes configured route names."""

    def __init__(self, registry: Any) -> None:
        r = registry
        self.estimate = Gauge(
            "gateway_quality_estimate",
            "Route quality relative to its reference model, (wins + ties) / samples over the last 7 days",
            ["route", "bound"],
            registry=r,
        )
        self.verdicts = Gauge(
            "gateway_quality_verdicts", "Judged samples over the last 7 days", ["route", "verdict"], registry=r
        )
        self.false_hits = Gauge(
            "gateway_quality_semantic_false_hit_rate",
            "Share of checked semantic cache hits judged wrong over the last 7 days",
            ["route", "bound"],
            registry=r,
        )
        self.spend = Gauge("gateway_quality_monitor_spend_usd", "Quality monitoring spend today (UTC)", registry=r)
        self._routes: set[str] = set()  # the routes the last update had rows for

    def update(self, rows: list[dict[str, Any]], spent: Decimal) -> None:
        for gone in self._routes - {row["route"] for row in rows}:  # nothing in the window: no stale values
            for bound in ("estimate", "low", "high"):
                _set_or_drop(self.estimate, (gone, bound), None)
                _set_or_drop(self.false_hits, (gone, bound), None)
            for verdict in ("win", "tie", "loss"):
                self.verdicts.labels(gone, verdict).set(0)
        self._routes = {row["route"] for row in rows}
        for row in rows:
            route = row["route"]
            for bound, key in (("estimate", "rate"), ("low", "ci95_low"), ("high", "ci95_high")):
                # no samples in the window: no value (a stale one would keep an alert quiet)
                _set_or_drop(self.estimate, (route, bound), row["estimate"][key] if row["samples"] else None)
                checked = row["semantic_false_hits"]["checked"]
                _set_or_drop(self.false_hits, (route, bound), row["semantic_false_hits"][key] if checked else None)
            for verdict, key in (("win", "wins"), ("tie", "ties"), ("loss", "losses")):
                self.verdicts.labels(route, verdict).set(row[key])
        self.spend.set(float(spent))


def _set_or_drop(gauge: Gauge, labels: tuple[str, str], value: float | None) -> None:
    if value is not None:
        gauge.labels(*labels).set(value)
        return
    with contextlib.suppress(KeyError):  # never set
        gauge.remove(*labels)


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
        body = {k: v for k, v in request.items() if k not in ("stream", "stream_options", "user")}
        return await self.monitor.reference_answer(reference, body)

    async def run_one(self, check: Check) -> bool | None:
        """Judge one decision through the monitor, then store the verdict beside the pairwise ones."""
        if check.route not in self.monitor.reference or self.monitor.spend.exhausted():
            return None
        tally = _Tally(check.hit_id, check.route)
        token = _TALLY.set(tally)
        try:
            verdict = await super().run_one(check)
            if verdict is not None:
                await self.monitor.store_semantic(check, verdict, tally)
        except _SAMPLE_ERRORS as exc:  # a dead judge or reference: this check has no verdict
            log.warning("semantic hit check %s failed: %r", check.hit_id, exc)
            return None
        finally:
            _TALLY.reset(token)
        return verdict
