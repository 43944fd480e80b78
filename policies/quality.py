"""``quality``: the best expected answer within the request's constraints."""

from __future__ import annotations

from policies.base import Candidate, Decision, Policy, RoutingInput, spill_saturated
from policies.registry import register


@register("quality")
class QualityPolicy(Policy):
    """Highest predicted quality first; ties go to the cheaper, then the faster model."""

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        ranking = spill_saturated(sorted(candidates, key=lambda c: (-c.quality, c.cost, c.latency_s)))
        win = ranking[0]
        reason = f"best predicted quality: {win.name} ({win.quality:.2f}/10)"
        return Decision(ranking, reason, self.name, {c.name: c.quality for c in candidates})
