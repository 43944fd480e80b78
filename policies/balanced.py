"""``balanced`` (the default): one utility combining expected quality, cost and latency.

Cost and latency are normalised across this request's candidates to 0..1 (1 best); cost on a log scale,
since hosted and local prices differ by orders of magnitude. Quality is measured in units of the
candidates' nominal quality gap (best minus worst configured score), so its term keeps the prompt's
difficulty: about 0 between models on an easy prompt, 1 at the learned router's threshold, up to 2 on a
very hard prompt. ``u = wq*q + wc*c + wl*l``: with ``wq = wc + wl`` a cheap, fast model wins exactly
below the calibrated threshold.
"""

from __future__ import annotations

import math
from typing import ClassVar

from policies.base import Candidate, Decision, RoutingInput, fmt_usd, spill_saturated
from policies.registry import register


def _norm(values: list[float], higher_is_better: bool) -> list[float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return [1.0] * len(values)
    return [((v - lo) / (hi - lo)) if higher_is_better else ((hi - v) / (hi - lo)) for v in values]


@register("balanced")
class BalancedPolicy:
    """Highest weighted utility first."""

    name: ClassVar[str] = "balanced"

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        wq, wc, wl = request.weights
        gap = max(c.base_quality for c in candidates) - min(c.base_quality for c in candidates)
        low = min(c.quality for c in candidates)
        q = [(c.quality - low) / gap if gap > 1e-9 else 1.0 for c in candidates]
        cost = _norm([math.log10(float(c.cost_usd) + 1e-9) for c in candidates], False)
        lat = _norm([c.latency_s for c in candidates], False)
        total = (wq + wc + wl) or 1.0
        utility = {c.name: (wq * q[i] + wc * cost[i] + wl * lat[i]) / total for i, c in enumerate(candidates)}
        ranking = spill_saturated(sorted(candidates, key=lambda c: -utility[c.name]))
        win = ranking[0]
        reason = (
            f"best utility {utility[win.name]:.2f}: {win.name} (quality {win.quality:.2f}, "
            f"{fmt_usd(win.cost_usd)}, {win.latency_s * 1000:.0f} ms; weights q{wq:g}/c{wc:g}/l{wl:g})"
        )
        return Decision(ranking, reason, self.name, utility)
