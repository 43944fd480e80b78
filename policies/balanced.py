"""``balanced`` (the default): one utility combining expected quality, cost and latency.

Cost and latency are normalised across this request's candidates to 0..1 (1 best); cost on a log scale,
since hosted and local prices differ by orders of magnitude. Quality is measured in units of the
candidates' nominal quality gap (best minus worst configured score), so its term keeps the prompt's
difficulty: about 0 between models on an easy prompt, 1 at the learned router's threshold, up to 2 on a
very hard prompt. ``u = wq*q + wc*c + wl*l``: with ``wq = wc + wl`` a cheap, fast model wins exactly
below the calibrated threshold.
"""

from __future__ import annotations

from math import log10
from typing import ClassVar

from policies.base import Candidate, Decision, RoutingInput, fmt_usd, spill_saturated
from policies.registry import register


@register("balanced")
class BalancedPolicy:
    """Highest weighted utility first."""

    name: ClassVar[str] = "balanced"

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        wq, wc, wl = request.weights
        total = (wq + wc + wl) or 1.0
        base = [c.base_quality for c in candidates]
        quality = [c.quality for c in candidates]
        cost = [log10(float(c.cost_usd) + 1e-9) for c in candidates]
        latency = [c.latency_s for c in candidates]
        gap = max(base) - min(base)
        q_low = min(quality)
        c_low, c_high = min(cost), max(cost)
        l_low, l_high = min(latency), max(latency)
        # Each term in 0..1 with 1 best (quality in units of the nominal gap, so up to 2 on a hard prompt);
        # a term on which all candidates tie scores 1 for each.
        q_scale = wq / gap if gap > 1e-9 else 0.0
        q_flat = 0.0 if gap > 1e-9 else wq
        c_scale = wc / (c_high - c_low) if c_high - c_low >= 1e-12 else 0.0
        c_flat = 0.0 if c_high - c_low >= 1e-12 else wc
        l_scale = wl / (l_high - l_low) if l_high - l_low >= 1e-12 else 0.0
        l_flat = 0.0 if l_high - l_low >= 1e-12 else wl
        flat = q_flat + c_flat + l_flat
        values = [
            (flat + (qi - q_low) * q_scale + (c_high - ci) * c_scale + (l_high - li) * l_scale) / total
            for qi, ci, li in zip(quality, cost, latency, strict=True)
        ]
        # Stable: equal utilities keep the candidates' order (reverse=True keeps stability).
        order = sorted(range(len(candidates)), key=values.__getitem__, reverse=True)
        ranking = [candidates[i] for i in order]
        if any(c.saturated for c in ranking):
            ranking = spill_saturated(ranking)
        win = ranking[0]
        utility = dict(zip([c.name for c in candidates], values, strict=True))
        reason = (
            f"best utility {utility[win.name]:.2f}: {win.name} (quality {win.quality:.2f}, "
            f"{fmt_usd(win.cost_usd)}, {win.latency_s * 1000:.0f} ms; weights q{wq:g}/c{wc:g}/l{wl:g})"
        )
        return Decision(ranking, reason, self.name, utility)
