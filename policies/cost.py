"""``cost``: the cheapest candidate expected to answer well enough."""

from __future__ import annotations

from typing import ClassVar, Final

from policies.base import Candidate, Decision, RankingPolicy, RoutingInput, fixed, fmt_usd, spill_saturated
from policies.registry import register

#: The policy's registered name (a Final constant: compiled, ``self.name`` would be a generic lookup).
NAME: Final = "cost"

#: Without a configured floor, "well enough" means a predicted MT-Bench-like score of at least this
#: for this prompt (predictions already account for the prompt's difficulty).
DEFAULT_FLOOR: Final = 7.0


def _cheapest_first(c: Candidate) -> tuple[float, float]:
    return c.cost, -c.quality


def _best_first(c: Candidate) -> float:
    return -c.quality


class CostPolicy(RankingPolicy):
    """Cheapest among candidates predicted good enough; the rest follow, best quality first."""

    name: ClassVar[str] = NAME

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
        good = sorted(ok, key=_cheapest_first)
        if len(ok) < len(candidates):
            rest = sorted([c for c in candidates if c not in ok], key=_best_first)
            ranking = spill_saturated(good) + rest if good else rest
        else:
            ranking = spill_saturated(good)
        win = ranking[0]
        if good:
            reason = (
                f"cheapest good-enough model: {win.name} at {fmt_usd(win.cost)} "
                f"(predicted quality {fixed(win.quality, 2)} >= {fixed(floor, 2)})"
            )
        else:
            reason = f"no model predicted good enough (>= {fixed(floor, 2)}); best quality: {win.name}"
        if win.saturated:
            reason += "; all good-enough models saturated"
        return Decision(ranking, reason, NAME, {c.name: c.cost for c in candidates})


register(NAME)(CostPolicy)  # a call, not the decorator: see register()
