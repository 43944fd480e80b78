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
from typing import ClassVar, Final

from policies.base import Candidate, Decision, RankingPolicy, RoutingInput, fixed, fmt_usd, spill_saturated
from policies.registry import register

#: The policy's registered name (a Final constant: compiled, ``self.name`` would be a generic lookup).
NAME: Final = "balanced"


class BalancedPolicy(RankingPolicy):
    """Highest weighted utility first."""

    name: ClassVar[str] = NAME

    def __init__(self) -> None:
        # The last weights seen and their label (formatting them costs 0.5 us per request).
        self._weights: tuple[float, ...] = (-1.0, -1.0, -1.0)
        self._label = ""

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        wq, wc, wl = request.weights
        total = (wq + wc + wl) or 1.0
        # One pass for every range (this runs per request; four comprehensions and six min/max calls took
        # half as long again).
        first = candidates[0]
        b_lo = b_hi = first.base_quality
        q_lo = first.quality
        c_lo = c_hi = log(first.cost + 1e-9)
        l_lo = l_hi = first.latency_s
        for c in candidates:
            b = c.base_quality
            if b < b_lo:
                b_lo = b
            elif b > b_hi:
                b_hi = b
            if c.quality < q_lo:
                q_lo = c.quality
            x = log(c.cost + 1e-9)  # the normalised term is the same in any base
            if x < c_lo:
                c_lo = x
            elif x > c_hi:
                c_hi = x
            t = c.latency_s
            if t < l_lo:
                l_lo = t
            elif t > l_hi:
                l_hi = t
        # Each term in 0..1, 1 best (quality in units of the nominal gap, so up to 2 on a hard prompt); a term
        # on which every candidate ties gives each its full weight.
        flat = 0.0
        gap = b_hi - b_lo
        if gap > 1e-9:
            q_scale = wq / gap
        else:
            q_scale, flat = 0.0, flat + wq
        if c_hi - c_lo >= 1e-12:
            c_scale = wc / (c_hi - c_lo)
        else:
            c_scale, flat = 0.0, flat + wc
        if l_hi - l_lo >= 1e-12:
            l_scale = wl / (l_hi - l_lo)
        else:
            l_scale, flat = 0.0, flat + wl
        # Highest utility first, equal utilities in the candidates' order: an insertion sort as the utilities are
        # computed (a handful of candidates; sorted() with a key function costs more here). The cost's log is
        # taken again rather than kept in a list from the first pass: cheaper, with the code just run.
        values: list[float] = []
        ranking: list[Candidate] = []
        ranked: list[float] = []  # the utilities of ``ranking``
        for c in candidates:
            v = (
                flat
                + (c.quality - q_lo) * q_scale
                + (c_hi - log(c.cost + 1e-9)) * c_scale
                + (l_hi - c.latency_s) * l_scale
            ) / total
            values.append(v)
            j = len(ranked)
            while j > 0 and ranked[j - 1] < v:
                j -= 1
            ranking.insert(j, c)
            ranked.insert(j, v)
        top = ranking[0]
        for c in ranking:
            if c.saturated:
                ranking = spill_saturated(ranking)
                break
        win = ranking[0]
        weights = request.weights
        if weights is not self._weights and weights != self._weights:  # a route passes the same tuple each time
            self._weights, self._label = weights, f"weights q{wq:g}/c{wc:g}/l{wl:g}"
        utility = ranked[0] if win is top else values[candidates.index(win)]
        reason = (
            f"best utility {fixed(utility, 2)}: {win.name} (quality {fixed(win.quality, 2)}, "
            f"{fmt_usd(win.cost)}, {fixed(win.latency_s * 1000, 0)} ms; {self._label})"
        )
        return Decision(ranking, reason, NAME, None, candidates, values)


register(NAME)(BalancedPolicy)  # a call, not the decorator: see register()
