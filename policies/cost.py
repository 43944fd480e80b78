"""``cost``: the cheapest candidate expected to answer well enough."""

from __future__ import annotations

from typing import ClassVar

from policies.base import Candidate, Decision, RoutingInput, fmt_usd, spill_saturated
from policies.registry import register

#: Without a configured floor, "well enough" means a predicted MT-Bench-like score of at least this
#: for this prompt (predictions already account for the prompt's difficulty).
DEFAULT_FLOOR = 7.0


def good_enough_floor(request: RoutingInput, candidates: list[Candidate]) -> float:
    """The quality a candidate must reach to count as good enough for this request."""
    return request.min_quality if request.min_quality is not None else DEFAULT_FLOOR


@register("cost")
class CostPolicy:
    """Cheapest among candidates predicted good enough; the rest follow, best quality first."""

    name: ClassVar[str] = "cost"

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        floor = good_enough_floor(request, candidates)
        if request.strong_needed is not None and request.strong_threshold is not None and request.min_quality is None:
            # A calibrated learned router decides what "good enough" means for this prompt.
            top = max(c.base_quality for c in candidates)
            needs_strong = request.strong_needed >= request.strong_threshold
            floor = top if needs_strong else 0.0
            ok = [c for c in candidates if c.base_quality >= floor]
        else:
            ok = [c for c in candidates if c.quality >= floor]
        good = sorted(ok, key=lambda c: (c.cost, -c.quality))
        chosen = {c.name for c in ok}
        rest = sorted((c for c in candidates if c.name not in chosen), key=lambda c: -c.quality)
        ranking = spill_saturated(good) + rest if good else rest
        win = ranking[0]
        if good:
            reason = (
                f"cheapest good-enough model: {win.name} at {fmt_usd(win.cost)} "
                f"(predicted quality {win.quality:.2f} >= {floor:.2f})"
            )
        else:
            reason = f"no model predicted good enough (>= {floor:.2f}); best quality: {win.name}"
        if win.saturated:
            reason += "; all good-enough models saturated"
        return Decision(ranking, reason, self.name, {c.name: c.cost for c in candidates})
