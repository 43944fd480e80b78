"""``quality``: the best expected answer within the request's constraints."""

from __future__ import annotations

from typing import ClassVar, Final

from policies.base import Candidate, Decision, RankingPolicy, RoutingInput, fixed, spill_saturated
from policies.registry import register

#: The policy's registered name (a Final constant: compiled, ``self.name`` would be a generic lookup).
NAME: Final = "quality"


def _best_first(c: Candidate) -> tuple[float, float, float]:
    return -c.quality, c.cost, c.latency_s


class QualityPolicy(RankingPolicy):
    """Highest predicted quality first; ties go to the cheaper, then the faster model."""

    name: ClassVar[str] = NAME

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        ranking = spill_saturated(sorted(candidates, key=_best_first))
        win = ranking[0]
        reason = f"best predicted quality: {win.name} ({fixed(win.quality, 2)}/10)"
        return Decision(ranking, reason, NAME, {c.name: c.quality for c in candidates})


register(NAME)(QualityPolicy)  # a call, not the decorator: see register()
