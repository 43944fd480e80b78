"""``balanced`` (the default): one utility combining expected quality, cost and latency.

Cost and latency are normalised across this request's candidates to 0..1 (1 best); cost on a log scale,
since hosted and local prices differ by orders of magnitude. Quality is measured in units of the
candidates' nominal quality gap (best minus worst configured score), so its term keeps the prompt's
difficulty: about 0 between models on an easy prompt, 1 at the learned router's threshold, up to 2 on a
very hard prompt. ``u = wq*q + wc*c + wl*l``: with ``wq = wc + wl`` a cheap, fast model wins exactly
below the calibrated threshold.
"""

from __future__ import annotations

from math import log

from policies.base import Candidate, Decision, Policy, RoutingInput, spill_saturated, usd
from policies.registry import register


def _scale(weight: float, values: list[float]) -> tuple[float, float]:
    """``(per unit, flat)``: a term's weight per unit of its spread across candidates; a term on which every
    candidate ties gives each its full weight (``flat``) instead."""
    spread = max(values) - min(values)
    return (weight / spread, 0.0) if spread >= 1e-12 else (0.0, weight)


@register("balanced")
class BalancedPolicy(Policy):
    """Highest weighted utility first."""

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        wq, wc, wl = request.weights
        total = (wq + wc + wl) or 1.0
        log_costs = [log(c.cost + 1e-9) for c in candidates]  # the normalised term is the same in any base
        latencies = [c.latency_s for c in candidates]
        # Quality in units of the nominal gap between the configured scores, so up to 2 on a hard prompt.
        base = [c.base_quality for c in candidates]
        gap = max(base) - min(base)
        q_scale, q_flat = (wq / gap, 0.0) if gap > 1e-9 else (0.0, wq)
        c_scale, c_flat = _scale(wc, log_costs)
        l_scale, l_flat = _scale(wl, latencies)
        q_lo, c_hi, l_hi = min(c.quality for c in candidates), max(log_costs), max(latencies)
        utility = {
            c.name: (
                q_flat
                + c_flat
                + l_flat
                + (c.quality - q_lo) * q_scale
                + (c_hi - x) * c_scale
                + (l_hi - c.latency_s) * l_scale
            )
            / total
            for c, x in zip(candidates, log_costs, strict=True)
        }
        # Highest utility first; equal utilities keep the candidates' order (sorted is stable).
        ranking = spill_saturated(sorted(candidates, key=lambda c: -utility[c.name]))
        win = ranking[0]
        reason = (
            f"best utility {utility[win.name]:.2f}: {win.name} (quality {win.quality:.2f}, "
            f"{usd(win.cost)}, {win.latency_s * 1000:.0f} ms; weights q{wq:g}/c{wc:g}/l{wl:g})"
        )
        return Decision(ranking, reason, self.name, utility)
