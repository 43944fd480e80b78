"""``cascade``: the cheapest candidate answers first; the gateway's answer check decides whether to escalate.

The policy only orders the ladder: cheapest first (saturated candidates after the others), each next rung the
next one up in cost. The pipeline (:mod:`gateway.cascade`) walks it: it asks a rung, scores the answer with
:class:`policies.answer_check.AnswerCheck` at the route's calibrated threshold, and returns the answer or asks
the next rung; the last rung's answer is returned unchecked.
"""

from __future__ import annotations

from policies.base import Candidate, Decision, Policy, RoutingInput, spill_saturated, usd
from policies.registry import register


@register("cascade")
class CascadePolicy(Policy):
    """Cheapest first, then up in cost (the strongest last); escalation is decided after each answer."""

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        ranking = spill_saturated(sorted(candidates, key=lambda c: (c.cost, -c.base_quality)))
        first = ranking[0]
        ladder = " -> ".join(c.name for c in ranking)
        reason = f"cascade: {first.name} ({usd(first.cost)}) answers first; escalation ladder {ladder}"
        return Decision(ranking, reason, self.name, {c.name: float(i) for i, c in enumerate(ranking)})
