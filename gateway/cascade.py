"""Stage 6 for a ``cascade`` route: ask the cheapest candidate, check its answer, escalate when it falls short.

The ladder is the ``cascade`` policy's ranking (cheapest first, capabilities, context windows, constraints and
breakers already applied by the decide stage). Every rung but the last is asked for a complete answer, with
token log-probabilities when its backend returns them (vLLM, OpenAI; stripped again when the client did not ask);
:class:`policies.answer_check.AnswerCheck` scores it (text, log-probabilities, ``finish_reason`` and the prompt
router's score) against the threshold the route's ``quality_target`` calibrates. Below it the answer is returned
(``x-gateway-cascade: accepted``); at or above it, it is paid for and the next rung is asked (``escalated``).
The last rung answers unchecked, streamed when the client streams. A rung that fails falls through to the next
(when the route has ``fallbacks``); when every rung above a held answer fails, the held answer is served.

Streaming: a checked rung's answer is held until the check passes, then sent as SSE chunks; an escalated one is
never shown and the next rung streams as usual. So an accepted stream's first token waits for the whole local
answer (``bench/cascade_ttft.py`` measures it), and an escalated one's for the local answer plus the strong
model's first token. Only chat requests are checked; completions walk the ladder as plain fallbacks.
"""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from backends import Backend, UpstreamResponse
from gateway.charges import in_flight
from gateway.context import AttemptCost, RequestContext
from gateway.errors import AllCandidatesFailed, UpstreamError, is_retryable
from gateway.protocol import check_not_cut, requested_max_tokens
from gateway.routing import DEFAULT_QUALITY_TARGET, Plan, cost_limit
from gateway.streaming import aiter_list, replay_chunks
from policies.answer_check import AnswerCheck
from policies.answer_check.confidence import token_logprobs
from policies.answer_check.tool_calls import check_tool_calls
from policies.answer_check.verifier import VerifierConfig, decide, parse_verdict, should_verify, verifier_request
from policies.base import Candidate

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline, Result

__all__ = ["LOGPROB_BACKENDS", "Cascade", "router_pick", "strip_logprobs"]

#: The judge's instructions, counted into its predicted cost (the system prompt is about this long).
_JUDGE_OVERHEAD = "x " * 110
#: Backend kinds that return token log-probabilities when asked (``logprobs: true``).
LOGPROB_BACKENDS = frozenset({"vllm", "openai"})


def strip_logprobs(body: dict[str, Any]) -> None:
    """Drop the log-probabilities the gateway asked for from a response body (as if never requested)."""
    for choice in body.get("choices") or []:
        if isinstance(choice, dict) and "logprobs" in choice:
            choice["logprobs"] = None


def _answer_text(body: dict[str, Any]) -> tuple[str, str | None, list[Any] | None]:
    """The first choice's text, finish reason and ``logprobs`` block."""
    for choice in body.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        msg = choice.get("message")
        text = msg.get("content") if isinstance(msg, dict) else choice.get("text")
        lp = choice.get("logprobs")
        return (text if isinstance(text, str) else ""), choice.get("finish_reason"), [lp] if lp else None
    return "", None, None


class Cascade:
    """Walks a cascade route's ladder for one request at a time (built once per pipeline)."""

    def __init__(self, pipeline: Pipeline, check: AnswerCheck | None) -> None:
        self.pipeline = pipeline
        self.check = check
        self._thresholds: dict[tuple[float, bool], float] = {}

    def threshold(self, plan: Plan) -> float:
        """The answer check's threshold for the route's ``quality_target`` (escalate at or above it)."""
        target = plan.quality_target if plan.quality_target is not None else DEFAULT_QUALITY_TARGET
        with_router = plan.strong_needed is not None
        key = (target, with_router)
        found = self._thresholds.get(key)
        if found is None:
            assert self.check is not None
            found = self._thresholds[key] = self.check.threshold_for_quality_target(target, with_router=with_router)
        return found

    async def run(self, ctx: RequestContext, plan: Plan, prompt: str) -> Result:
        """Stage 6 for a cascade route (see the module docstring)."""
        p = self.pipeline
        ladder = plan.decision.ranking
        if self.check is None or ctx.endpoint != "chat" or len(ladder) < 2:
            if ctx.endpoint == "chat" and len(ladder) == 1:
                only = ladder[0].name
                route = p.router.routes.get(plan.route or "")
                others = [m for m in (route.models or ()) if m != only] if route is not None else []
                down = [m for m in others if m in p.router.models and not p.router.models[m].is_up()]
                ctx.cascade = "accepted"
                if down:  # an answer no check saw, while a rung above is down: served, not cached
                    ctx.cascade_reason = f"nothing to escalate to: {only} is the only candidate up"
                    ctx.degraded = "nothing to escalate to"
                else:  # the others cannot take this request (its context, tools, a constraint): nothing is degraded
                    ctx.cascade_reason = f"nothing to escalate to: {only} is the only candidate for this request"
            if not plan.fallbacks:
                del ladder[1:]
            return await p._call(ctx, plan)
        threshold = self.threshold(plan)
        # the client's (or the route's) cost limit holds for the whole cascade, not each rung on its own: the rungs
        # asked, the judge and the next rung together (each within it, an escalation passed it)
        cap = cost_limit(ctx.constraints, p.router.routes.get(ctx.route or ""))
        held: tuple[Backend, UpstreamResponse, float] | None = None
        last: UpstreamError | None = None
        for rung, cand in enumerate(ladder):
            backend, breaker = p.backends[cand.name], p.breakers[cand.name]
            if last is not None:
                await p._backoff(1)
            ctx.attempts.append(cand.name)
            try:
                if rung == len(ladder) - 1:
                    ctx.predicted_cost = cand.cost_usd
                    return await p._attempt(ctx, backend, breaker)
                t0 = ctx.elapsed()
                response = await self._ask(ctx, backend)
            except UpstreamError as err:
                p._attempt_failed(ctx, cand.name, err)
                p.charges.timed_out(ctx, cand.name, err, stream=ctx.stream if rung == len(ladder) - 1 else False)
                last = err
                if not is_retryable(err) or not plan.fallbacks:
                    if held is None:
                        raise
                    break
                if held is None and rung < len(ladder) - 1:  # the next rung answers: a cascade the dashboard counts
                    ctx.cascade, ctx.cascade_reason = "escalated", f"{cand.name} failed: {err.message}"
                continue
            breaker.record_success()
            last = None
            answer_cost = None if cap is None else self._answer_cost(ctx, cand.name, response.body)
            calls = check_tool_calls(response.body, ctx.body)
            if calls is not None:  # a tool call has no text to check: its form is checked
                escalate, reason = not calls[0], calls[1]
            else:
                try:
                    escalate, reason = await self._check_text(
                        ctx, plan, prompt, response, threshold, ladder[rung + 1], cap, answer_cost
                    )
                except asyncio.CancelledError:
                    # the client left while the judge read the answer: that answer was generated all the same, and
                    # is this request's (not the judge's, priced at the client's prompt and max_tokens)
                    ctx.chosen_model = cand.name
                    p.charges.set_usage(ctx, response.body)
                    raise
            if escalate and cap is not None and answer_cost is not None:
                ahead = answer_cost + ladder[rung + 1].cost_usd
                if p.charges.paid_attempts(ctx) + ahead > cap:  # the judge's call, if any, is paid by now
                    escalate, reason = False, f"escalating would pass the ${cap} cost limit; {reason}"
            if not escalate:
                ctx.cascade = "accepted"
                ctx.cascade_reason = reason
                return self._serve(ctx, backend, response, t0)
            ctx.cascade = "escalated"
            ctx.cascade_reason = f"{cand.name} {reason}"
            self._pay(ctx, cand.name, response.body)
            held = (backend, response, t0)
        if held is not None:  # every rung above the held answer failed: better that answer than none
            backend, response, t0 = held
            spent = ctx.cascade_attempts.pop(_last_escalated(ctx))
            ctx.cascade = "accepted"
            ctx.cascade_reason = f"escalation failed ({spent.model} kept): {ctx.cascade_reason}"
            ctx.degraded = "escalation failed"
            return self._serve(ctx, backend, response, t0)
        assert last is not None
        raise AllCandidatesFailed(last, ctx.attempts)

    async def _check_text(
        self,
        ctx: RequestContext,
        plan: Plan,
        prompt: str,
        response: UpstreamResponse,
        threshold: float,
        above: Candidate,
        cap: Decimal | None = None,
        answer_cost: Decimal | None = None,
    ) -> tuple[bool, str]:
        """Whether a rung's text answer escalates (the check, and the route's judge when it is unsure), and why;
        ``cap``: the request's cost limit, ``answer_cost`` what this answer cost (no judge call that, with the next
        rung, would pass the limit)."""
        assert self.check is not None
        text, finish, lp_blocks = _answer_text(response.body)
        if finish == "length" and _cut_by_client(ctx.body, response.body):
            finish = None  # the client's own max_tokens: the next rung would be cut at the same place
        lps = token_logprobs(lp_blocks) if lp_blocks else None
        verdict = self.check.check(prompt, text, logprobs=lps, finish_reason=finish, router_score=plan.strong_needed)
        why = ", ".join(verdict.reasons) or "nothing stood out"
        escalate = verdict.escalate(threshold)
        committed = None  # paid so far, and this rung's answer
        if answer_cost is not None:
            committed = self.pipeline.charges.paid_attempts(ctx) + answer_cost
        judged = await self._verify(ctx, prompt, text, verdict.score, threshold, above, cap, committed)
        if judged is not None:
            escalate, why = judged[0], f"{judged[1]}; {why}"
        return escalate, f"score {verdict.score:.3f} vs {threshold:.3f}: {why}"

    async def _ask(self, ctx: RequestContext, backend: Backend) -> UpstreamResponse:
        """A complete answer from a checked rung (never streamed), with log-probabilities where available."""
        p = self.pipeline
        p.breakers[backend.name].before_call(ctx)
        body = p._upstream_body(ctx, backend)
        body["stream"] = False
        body.pop("stream_options", None)
        spec = p.settings.model(backend.name)
        if spec is not None and spec.backend in LOGPROB_BACKENDS and not body.get("logprobs"):
            body["logprobs"] = True
            body["top_logprobs"] = 0
        response = await self._complete(ctx, backend, body)
        check_not_cut(response.body, backend.name)  # a cut answer is not checked: the next rung answers
        return response

    async def _complete(self, ctx: RequestContext, backend: Backend, body: dict[str, Any]) -> UpstreamResponse:
        """A complete answer the client will not get as it is (a checked rung's, the judge's): traced with its own
        usage, and charged should the client leave while it is in flight."""
        tracing = self.pipeline.tracing
        with tracing.attempt(ctx, backend.name, stream=False), in_flight(ctx, backend.name, stream=False):
            response = await backend.complete(ctx.path, body)
            tracing.attempt_answered(ctx, response.body)  # the request's usage is not this answer's
            return response

    async def _verify(
        self,
        ctx: RequestContext,
        prompt: str,
        answer: str,
        score: float,
        threshold: float,
        above: Candidate,
        cap: Decimal | None = None,
        committed: Decimal | None = None,
    ) -> tuple[bool, str] | None:
        """The route's judge call, when it has one and it is worth it: ``(escalate, reason)``, or None (no call, or
        no verdict: the check decides). The call is paid for like an attempt (outcome ``verifier``)."""
        p = self.pipeline
        route = p.router.routes.get(ctx.route or "")
        cfg = route.verifier if route is not None else None
        if cfg is None or cfg.model not in p.backends:
            return None
        judge = p.router.models.get(cfg.model)
        if judge is None or not judge.is_up():  # a broken judge would hold up every request near the threshold
            return None
        vcfg = VerifierConfig(cfg.model, cfg.band, cfg.min_escalation_cost_usd, cfg.min_rating, cfg.max_tokens)
        body = verifier_request(prompt, answer, vcfg)
        judge_in = p.counter.count(_JUDGE_OVERHEAD + body["messages"][1]["content"])
        estimate = p.charges.price(cfg.model).cost(judge_in, cfg.max_tokens)
        if not should_verify(score, threshold, float(above.cost_usd), float(estimate), vcfg):
            return None
        if cap is not None and committed is not None and committed + estimate + above.cost_usd > cap:
            return None  # the judge and the rung it could send the request to would pass the cost limit
        spec = p.settings.model(cfg.model)
        body["model"] = spec.upstream_name if spec is not None else cfg.model
        backend, breaker = p.backends[cfg.model], p.breakers[cfg.model]
        breaker.before_call(ctx)
        try:
            response = await self._complete(ctx, backend, body)
        except UpstreamError as err:
            p._attempt_failed(ctx, cfg.model, err)
            p.charges.timed_out(ctx, cfg.model, err, stream=False)
            return None
        except asyncio.CancelledError:  # the client left: the judge read its prompt and may have answered
            ctx.calling = None
            ctx.cascade_attempts.append(AttemptCost(cfg.model, judge_in, cfg.max_tokens, estimate, "verifier"))
            raise
        breaker.record_success()
        self._pay(ctx, cfg.model, response.body, "verifier")
        reply = _answer_text(response.body)[0]
        escalate, how = decide(score, threshold, parse_verdict(reply), vcfg)
        return None if how == "check" else (escalate, how)

    def _answer_cost(self, ctx: RequestContext, model: str, body: dict[str, Any]) -> Decimal:
        """What ``model``'s answer ``body`` costs."""
        charges = self.pipeline.charges
        pt, ct, _ = charges.tokens(ctx, body)
        return charges.price(model).cost(pt, ct)

    def _pay(self, ctx: RequestContext, model: str, body: dict[str, Any], outcome: str = "escalated") -> None:
        """Record a paid call whose answer the client never sees: an escalated answer, or the judge's verdict."""
        charges = self.pipeline.charges
        pt, ct, _ = charges.tokens(ctx, body)
        ctx.cascade_attempts.append(AttemptCost(model, pt, ct, charges.price(model).cost(pt, ct), outcome))

    def _serve(self, ctx: RequestContext, backend: Backend, response: UpstreamResponse, t0: float) -> Result:
        """Return a checked rung's answer: as it is, or replayed as SSE chunks to a streaming client."""
        p = self.pipeline
        if not ctx.body.get("logprobs"):
            strip_logprobs(response.body)
        ctx.chosen_model = backend.name
        if not ctx.stream:
            return p._answer(ctx, backend, response, t0)
        from gateway.pipeline import StreamResult

        body = response.body
        body["model"] = backend.name
        p.charges.set_usage(ctx, body)
        p.charges.check_answer_cost(ctx, backend.name)  # before the first byte: a 402, as when not streaming
        # the answer is whole: its cost header is its cost (not the prediction of a rung that failed above it)
        ctx.predicted_cost = p.charges.price(backend.name).cost(ctx.usage.prompt_tokens, ctx.usage.completion_tokens)
        ctx.finish_reason = _answer_text(body)[1]
        ctx.ttft_s = ctx.elapsed()
        backend.stats.observe(ttft_s=None, total_s=ctx.elapsed() - t0, completion_tokens=ctx.usage.completion_tokens)
        p.keep_answer(ctx, body)  # cached and sampled like a whole answer: it is one
        frames = replay_chunks(body, backend.name, ctx.client_wants_usage)
        return StreamResult(p._finish_after(ctx, aiter_list(frames)), p._headers(ctx))


def _cut_by_client(request: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether an answer that ended for its length reached the client's own ``max_tokens`` (or
    ``max_completion_tokens``); without a usage figure, whether the client set one."""
    limit = requested_max_tokens(request)
    if limit is None:
        return False
    usage = body.get("usage")
    produced = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return not isinstance(produced, int) or produced >= limit


def _last_escalated(ctx: RequestContext) -> int:
    """Where the held answer's escalation is in ``ctx.cascade_attempts`` (a judge's or a timed-out rung's entry may
    follow it)."""
    return max(i for i, a in enumerate(ctx.cascade_attempts) if a.outcome == "escalated")


def router_pick(plan: Plan) -> str | None:
    """The candidate the prompt router alone would have chosen at the route's threshold (None: no router)."""
    if plan.strong_needed is None or plan.strong_threshold is None or math.isnan(plan.strong_needed):
        return None
    ladder = plan.decision.ranking
    if plan.strong_needed >= plan.strong_threshold:
        return max(ladder, key=lambda c: (c.base_quality, -c.cost)).name
    return ladder[0].name
