"""``learned``: the learned quality router decides whether the strong model is needed.

The router scores the prompt (P(the cheap model's answer is not good enough)); at or above the route's
calibrated threshold the best-quality candidates come first, below it the cheapest. The threshold is the
route's operating point (``strong_share`` or ``quality_target``), calibrated on the router's training data.
"""

from __future__ import annotations

from policies.base import Candidate, Decision, Policy, RoutingInput, spill_saturated, usd
from policies.registry import register


@register("learned")
class LearnedPolicy(Policy):
    """Strong model when the learned router says so, else the cheapest candidate."""

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        p, threshold = request.strong_needed, request.strong_threshold
        if p is None or threshold is None:
            # No router or no operating point: fall back to the transparent difficulty estimate.
            p = request.difficulty if p is None else p
            threshold = 0.5 if threshold is None else threshold
        strong = p >= threshold
        if strong:
            ordered = sorted(candidates, key=lambda c: (-c.base_quality, c.cost))
        else:
            ordered = sorted(candidates, key=lambda c: (c.cost, -c.base_quality))
        ranking = spill_saturated(ordered)
        win = ranking[0]
        verdict = ">=" if strong else "<"
        needs = "needs the strong model" if strong else "the cheap model suffices"
        reason = (
            f"learned router: P(strong needed)={p:.3f} {verdict} threshold {threshold:.3f}, "
            f"{needs}: {win.name} ({usd(win.cost)})"
        )
        return Decision(ranking, reason, self.name, {c.name: p for c in candidates})
