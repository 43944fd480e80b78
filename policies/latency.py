"""``latency``: the lowest expected completion time from live measurements and queue depth."""

from __future__ import annotations

from policies.base import Candidate, Decision, Policy, RoutingInput, spill_saturated
from policies.registry import register


@register("latency")
class LatencyPolicy(Policy):
    """Fastest predicted completion first; saturated servers spill over to the next best."""

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        ranking = spill_saturated(sorted(candidates, key=lambda c: c.latency_s))
        win = ranking[0]
        reason = f"fastest predicted completion: {win.name} in {win.latency_s * 1000:.0f} ms (load {win.load:.0f})"
        spilled = [c.name for c in candidates if c.saturated and c.latency_s <= win.latency_s]
        if spilled:
            reason += f"; spilled over from saturated {', '.join(spilled)}"
        return Decision(ranking, reason, self.name, {c.name: c.latency_s for c in candidates})
