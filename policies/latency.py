"""``latency``: the lowest expected completion time from live measurements and queue depth."""

from __future__ import annotations

from typing import ClassVar, Final

from policies.base import Candidate, Decision, RankingPolicy, RoutingInput, fixed, spill_saturated
from policies.registry import register

#: The policy's registered name (a Final constant: compiled, ``self.name`` would be a generic lookup).
NAME: Final = "latency"


def _fastest_first(c: Candidate) -> float:
    return c.latency_s


class LatencyPolicy(RankingPolicy):
    """Fastest predicted completion first; saturated servers spill over to the next best."""

    name: ClassVar[str] = NAME

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        ranking = spill_saturated(sorted(candidates, key=_fastest_first))
        win = ranking[0]
        reason = (
            f"fastest predicted completion: {win.name} in {fixed(win.latency_s * 1000, 0)} ms "
            f"(load {fixed(win.load, 0)})"
        )
        spilled = [c.name for c in candidates if c.saturated and c.latency_s <= win.latency_s]
        if spilled:
            reason += f"; spilled over from saturated {', '.join(spilled)}"
        return Decision(ranking, reason, NAME, {c.name: c.latency_s for c in candidates})


register(NAME)(LatencyPolicy)  # a call, not the decorator: see register()
