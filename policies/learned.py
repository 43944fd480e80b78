"""``learned``: the learned quality router decides whether the strong model is needed.

The router scores the prompt (P(the cheap model's answer is not good enough)); at or above the route's
calibrated threshold the best-quality candidates come first, below it the cheapest. The threshold is the
route's operating point (``strong_share`` or ``quality_target``), calibrated on the router's training data.
"""

from __future__ import annotations

from typing import ClassVar, Final

from policies.base import Candidate, Decision, RankingPolicy, RoutingInput, fixed, fmt_usd, spill_saturated
from policies.registry import register

#: The policy's registered name (a Final constant: compiled, ``self.name`` would be a generic lookup).
NAME: Final = "learned"


def _strong_first(c: Candidate) -> tuple[float, float]:
    return -c.base_quality, c.cost


def _cheap_first(c: Candidate) -> tuple[float, float]:
    return c.cost, -c.base_quality


class LearnedPolicy(RankingPolicy):
    """Strong model when the learned router says so, else the cheapest candidate."""

    name: ClassVar[str] = NAME

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        p, threshold = request.strong_needed, request.strong_threshold
        if p is None or threshold is None:
            # No router or no operating point: fall back to the transparent difficulty estimate.
            p = request.difficulty if p is None else p
            threshold = 0.5 if threshold is None else threshold
        strong = p >= threshold
        ranking = spill_saturated(sorted(candidates, key=_strong_first if strong else _cheap_first))
        win = ranking[0]
        verdict = ">=" if strong else "<"
        needs = "needs the strong model" if strong else "the cheap model suffices"
        reason = (
            f"learned router: P(strong needed)={fixed(p, 3)} {verdict} threshold {fixed(threshold, 3)}, "
            f"{needs}: {win.name} ({fmt_usd(win.cost)})"
        )
        return Decision(ranking, reason, NAME, dict.fromkeys([c.name for c in candidates], float(p)))


register(NAME)(LearnedPolicy)  # a call, not the decorator: see register()
