"""The PGR curve in plain Python: the one implementation behind :func:`policies.router.metrics.pgr_curve`
and the serving-time calibration of :class:`policies.router.model.QualityRouter`.

The gateway calibrates thresholds once at start-up from ~12k stored points; doing it without numpy keeps
numpy (~11 MiB) out of the serving process. See :mod:`policies.router.metrics` for the definitions.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate


@dataclass(frozen=True, slots=True)
class CurvePoints:
    """``shares[k]``, ``pgr[k]`` and ``thresholds[k]`` after routing the ``k`` highest-scored prompts
    (compact float64 arrays: a serving process keeps them)."""

    shares: array[float]
    pgr: array[float]
    thresholds: array[float]

    @property
    def has_gap(self) -> bool:
        """Whether the strong model is better than the weak one on these points (else PGR is undefined: NaN)."""
        return not math.isnan(self.pgr[0])

    def threshold_for_pgr(self, target: float) -> float:
        """The score threshold whose PGR reaches ``target`` with the fewest strong calls (``<= 0``: ``inf``,
        never strong; unreachable: 0, always strong).

        Without a gap (:attr:`has_gap` false) the weak model alone serves at least the strong model's quality,
        so it meets every target: ``inf``."""
        if math.isnan(target):
            raise ValueError("target_pgr must be a number")
        if target <= 0.0 or not self.has_gap:
            return math.inf
        hit = first_reaching(self.pgr, target)
        return 0.0 if hit is None else self.thresholds[max(hit, 1)]

    def share_for_pgr(self, target: float) -> float:
        """The smallest share of strong calls whose PGR reaches ``target`` (1 when none does; 0 without a gap,
        as :meth:`threshold_for_pgr`)."""
        if not self.has_gap:
            return 0.0
        hit = first_reaching(self.pgr, target)
        return 1.0 if hit is None else self.shares[hit]


def _floats(values: Sequence[float], name: str) -> list[float]:
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} contains non-finite values")
    return out


def pgr_points(
    scores: Sequence[float],
    weak: Sequence[float],
    strong: Sequence[float],
    weights: Sequence[float] | None = None,
) -> CurvePoints:
    """The PGR curve of routing by ``scores`` (higher = strong first); tied scores share their mean gain."""
    s = _floats(scores, "scores")
    w_q = _floats(weak, "weak")
    s_q = _floats(strong, "strong")
    n = len(s)
    if n == 0 or len(w_q) != n or len(s_q) != n:
        raise ValueError("scores, weak and strong must be non-empty and of equal length")
    wt = [1.0] * n if weights is None else _floats(weights, "weights")
    total_w = sum(wt)
    if len(wt) != n or any(w < 0 for w in wt) or total_w <= 0:
        raise ValueError("weights must be non-negative, of the same length, and not all zero")

    order = sorted(range(n), key=lambda i: -s[i])  # stable: ties keep their input order
    s_sorted = [s[i] for i in order]
    wt_sorted = [wt[i] for i in order]
    gain = [(s_q[i] - w_q[i]) * wt[i] for i in order]
    smoothed: list[float] = []
    start = 0
    while start < n:  # each block of tied scores gets its weighted mean gain
        end = start
        block_gain = 0.0
        block_wt = 0.0
        while end < n and s_sorted[end] == s_sorted[start]:
            block_gain += gain[end]
            block_wt += wt_sorted[end]
            end += 1
        rate = block_gain / block_wt if block_wt > 0 else 0.0
        smoothed.extend(rate * wt_sorted[k] for k in range(start, end))
        start = end

    cum_gain = [0.0, *accumulate(smoothed)]
    shares = [0.0, *(c / total_w for c in accumulate(wt_sorted))]
    total_gap = math.fsum(wt[i] * (s_q[i] - w_q[i]) for i in range(n))
    pgr = [math.nan] * (n + 1) if total_gap <= 0 else [c / total_gap for c in cum_gain]
    return CurvePoints(array("d", shares), array("d", pgr), array("d", [math.inf, *s_sorted]))


def first_reaching(values: Sequence[float], target: float) -> int | None:
    """Index of the first value ``>= target`` (within 1e-12), or None."""
    goal = target - 1e-12
    for i, v in enumerate(values):
        if v >= goal:
            return i
    return None
