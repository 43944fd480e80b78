"""What a request cost and what it saved: the prices routing predicts with, applied to the tokens it used.

One price function (:meth:`Charges.price`, the model's price at this moment's throughput) serves routing's
prediction and the ledger, so the two differ only by the tokens: predicted from the prompt and ``max_tokens``
before the call, counted from the upstream's ``usage`` (or by the tokenizer when it sent none) after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from gateway.context import AttemptCost, RequestContext, usage_tokens
from gateway.errors import BudgetExceeded, UpstreamError, UpstreamTimeout
from gateway.pricing import ZERO, Price
from gateway.protocol import choice_text, generated_per_prompt, prompt_count
from gateway.routing import DEFAULT_OUTPUT_TOKENS, Router
from gateway.tokens import TokenCounter


class Charges:
    """Usage, cost, baseline cost and savings of requests; built once per pipeline."""

    def __init__(self, router: Router, counter: TokenCounter, baseline: Price | None) -> None:
        self.router = router
        self.counter = counter
        #: the price of ``ledger.baseline_model`` (savings are counted against it); None if it has none
        self.baseline = baseline

    def price(self, model: str) -> Price:
        """The price of ``model`` now: what routing predicted with, at this moment's throughput (nothing for a
        model the config does not know, e.g. a cached answer's former model)."""
        facts = self.router.models.get(model)
        return ZERO if facts is None else facts.price.now()

    def tokens(self, ctx: RequestContext, body: dict[str, Any]) -> tuple[int, int, bool]:
        """An answer's prompt and completion tokens, and whether they are estimated: from the upstream's
        ``usage``, else the prompt as counted before the call and the choices counted by the tokenizer."""
        usage = body.get("usage")
        if isinstance(usage, dict) and ("prompt_tokens" in usage or "completion_tokens" in usage):
            return usage_tokens(usage.get("prompt_tokens")), usage_tokens(usage.get("completion_tokens")), False
        completion = sum(self.counter.count(choice_text(c)) for c in body.get("choices") or [] if isinstance(c, dict))
        return ctx.prompt_tokens_estimate, completion, True

    def set_usage(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        """``ctx.usage`` from the answer ``body`` (:meth:`tokens`)."""
        ctx.usage.prompt_tokens, ctx.usage.completion_tokens, estimated = self.tokens(ctx, body)
        if estimated:
            ctx.usage.estimated = True

    def charge_abandoned(self, ctx: RequestContext) -> None:
        """Usage for a request whose client left while its upstream call was in flight (no answer came back).

        The upstream read the prompt, and a non-streamed answer is written to its end by a hosted API (which
        bills it) whoever is still listening: charged, as estimated, the counted prompt and, unless the request
        streamed (cancelling a stream stops its generation), the answer routing expected (``max_tokens``, else the
        model's average) for every choice. Without this, hanging up made any request free for the caller's budget.
        """
        model = ctx.calling
        if ctx.chosen_model is not None or model is None:
            return
        ctx.chosen_model = model
        ctx.usage.prompt_tokens = ctx.prompt_tokens_estimate
        # a cascade's checked rung is asked for a whole answer even when its client streams: that answer is written
        ctx.usage.completion_tokens = self._unseen_completion(ctx, model, ctx.calling_stream)
        ctx.usage.estimated = True

    def timed_out(self, ctx: RequestContext, model: str, err: UpstreamError, stream: bool | None = None) -> None:
        """A call to ``model`` that failed with ``err``: if it timed out after reaching the upstream, a paid
        attempt (outcome ``timed_out``), estimated as :meth:`charge_abandoned` estimates: the upstream read the
        prompt and a hosted API generates, and bills, a non-streamed answer whoever still waits for it.

        Without this a request whose answer takes longer than the model's timeouts (a huge ``max_tokens``) cost
        the caller nothing, however many candidates it timed out on. ``stream`` says how the call was made
        (default: as the client asked; a cascade asks its checked rungs for complete answers).
        """
        if not isinstance(err, UpstreamTimeout) or not err.reached:
            return
        pt = ctx.prompt_tokens_estimate
        ct = self._unseen_completion(ctx, model, stream)
        ctx.cascade_attempts.append(AttemptCost(model, pt, ct, self.price(model).cost(pt, ct), "timed_out"))

    def _unseen_completion(self, ctx: RequestContext, model: str, stream: bool | None = None) -> int:
        """The completion tokens charged for a call whose answer never came back: none for a stream (``stream``,
        by default as the client asked; cancelling it stops the generation) or embeddings, else the answer routing
        expected (:meth:`_expected_completion`)."""
        streamed = ctx.stream if stream is None else stream
        return 0 if streamed or ctx.endpoint == "embeddings" else self._expected_completion(ctx, model)

    def _expected_completion(self, ctx: RequestContext, model: str) -> int:
        body = ctx.body
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        facts = self.router.models.get(model)
        if isinstance(limit, int) and limit > 0:
            # No model writes past its context window, whatever max_tokens says (a model asked for by name is not
            # checked against it: its window may be configured too small, and the upstream refuses what is too big).
            per_choice = limit if facts is None else min(limit, facts.context_window)
        else:
            average = self.router.average_output_tokens()
            per_choice = facts.expected_output(average) if facts is not None else DEFAULT_OUTPUT_TOKENS
        return per_choice * generated_per_prompt(body) * prompt_count(ctx.endpoint, body)

    def charge(self, ctx: RequestContext) -> None:
        """Set the request's cost, its baseline cost and what it saved (escalated cascade answers are paid too)."""
        u = ctx.usage
        if ctx.chosen_model is None:  # no answer: what it paid for (calls that timed out) saved nothing
            ctx.cost_usd = self.paid_attempts(ctx)
            ctx.saved_usd = ctx.baseline_cost_usd - ctx.cost_usd
            return
        full = self.price(ctx.chosen_model).cost(u.prompt_tokens, u.completion_tokens)
        full += self.paid_attempts(ctx)
        if ctx.endpoint == "embeddings":  # nothing routes an embedding: its baseline is the model asked for
            asked = self.router.models.get(ctx.requested_model or "")  # not the fallback that answered
            ctx.baseline_cost_usd = full if asked is None else asked.price.now().cost(u.prompt_tokens, 0)
        elif self.baseline is not None:
            ctx.baseline_cost_usd = self.baseline.cost(u.prompt_tokens, u.completion_tokens)
        # One meaning everywhere: saved = what the baseline model would have cost - what this cost.
        # A cache hit costs nothing, so it saves the whole baseline cost of its tokens.
        ctx.cost_usd = Decimal(0) if ctx.cache_hit else full
        ctx.saved_usd = ctx.baseline_cost_usd - ctx.cost_usd
        if ctx.cascade is not None:
            ctx.routed_cost_usd = self.routed_cost(ctx, ctx.extra.get("cascade_router_pick"))

    def routed_cost(self, ctx: RequestContext, plan_pick: str | None) -> Decimal | None:
        """What routing by the prompt router alone would have cost for a cascade's request: its pick's price on
        the tokens that model produced here, or, when it was not asked, on the final answer's tokens."""
        if plan_pick is None:
            return None
        for a in ctx.cascade_attempts:
            if a.model == plan_pick and a.outcome == "escalated":
                return a.cost_usd
        u = ctx.usage
        if plan_pick == ctx.chosen_model:
            return ctx.cost_usd - self.paid_attempts(ctx)  # the served answer
        return self.price(plan_pick).cost(u.prompt_tokens, u.completion_tokens)

    @staticmethod
    def paid_attempts(ctx: RequestContext, *, timed_out: bool = True) -> Decimal:
        """What the calls whose answers the client never sees cost (a cascade's escalated answers, its judge, and,
        with ``timed_out``, calls that timed out after reaching the upstream).

        The spend caps leave the timed-out calls out: each is estimated at the whole answer the request reserved,
        so counting them would refuse every answer after a timeout; a key's spend can then pass its budget by
        those estimates, once (its next request is refused)."""
        return sum((a.cost_usd for a in ctx.cascade_attempts if timed_out or a.outcome != "timed_out"), Decimal(0))

    def check_answer_cost(self, ctx: RequestContext, model: str) -> None:
        """Refuse (402) a complete answer that cost more than the key could still spend (an upstream ignoring
        ``max_tokens``): charged, recorded, and not sent; a cascade's replayed stream is checked the same way."""
        cap = ctx.spend_cap_usd
        if (
            cap is not None
            and self.price(model).cost(ctx.usage.prompt_tokens, ctx.usage.completion_tokens)
            + self.paid_attempts(ctx, timed_out=False)
            > cap
        ):
            raise BudgetExceeded(
                f"The answer cost more than the ${cap:f} reserved for it against this key's budget; it was not sent.",
                code="budget_exceeded_by_answer",
            )

    def stream_estimate(self, ctx: RequestContext) -> Decimal:
        """A stream's cost before it is relayed (its header): the routing prediction plus paid cascade answers."""
        cost = Decimal(0) if ctx.cache_hit or ctx.predicted_cost is None else ctx.predicted_cost
        return cost + self.paid_attempts(ctx)


@contextlib.contextmanager
def in_flight(ctx: RequestContext, model: str, stream: bool | None = None) -> Iterator[None]:
    """``ctx.calling`` names ``model`` while its upstream call is in flight, for
    :meth:`Charges.charge_abandoned`: the call's answer or failure clears it, a cancellation (the client left)
    leaves it set. ``stream``: how the call is made, when not as the client asked."""
    ctx.calling, ctx.calling_stream = model, stream
    try:
        yield
    except asyncio.CancelledError:
        raise
    except BaseException:
        ctx.calling = None
        raise
    ctx.calling = None
