"""``cost``: the cheapest candidate expected to answer well enough."""

from __future__ import annotations

from policies.base import Candidate, Decision, Policy, RoutingInput, spill_saturated, usd
from policies.registry import register

#: Without a configured floor, "well enough" means a predicted MT-Bench-like score of at least this
#: for this prompt (predictions already account for the prompt's difficulty).
DEFAULT_FLOOR = 7.0


@register("cost")
class CostPolicy(Policy):
    """Cheapest among candidates predicted good enough; the rest follow, best quality first."""

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        p, threshold, min_quality = request.strong_needed, request.strong_threshold, request.min_quality
        if p is not None and threshold is not None and min_quality is None:
            # A calibrated learned router decides what "good enough" means for this prompt: below its
            # threshold any model is, at or above it only the best configured ones.
            floor = max(c.base_quality for c in candidates) if p >= threshold else 0.0
            ok = [c for c in candidates if c.base_quality >= floor]
        else:
            floor = min_quality if min_quality is not None else DEFAULT_FLOOR
            ok = [c for c in candidates if c.quality >= floor]
        good = spill_saturated(sorted(ok, key=lambda c: (c.cost, -c.quality)))
        rest = sorted((c for c in candidates if c not in ok), key=lambda c: -c.quality)
        ranking = good + rest
        win = ranking[0]
        if good:
            reason = (
                f"cheapest good-enough model: {win.name} at {usd(win.cost)} "
                f"(predicted quality {win.quality:.2f} >= {floor:.2f})"
            )
        else:
            reason = f"no model predicted good enough (>= {floor:.2f}); best quality: {win.name}"
        if win.saturated:
            reason += "; all good-enough models saturated"
        return Decision(ranking, reason, self.name, {c.name: c.cost for c in candidates})
