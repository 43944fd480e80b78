"""Routing metrics as defined in the RouteLLM paper (pure functions, numpy only).

A router orders prompts by score (highest first = most in need of the strong model) and sends
the top share ``x`` of them to the strong model, the rest to the weak one.

* ``quality(x)``: mean quality of the answers actually served at strong-call share ``x``.
* ``PGR(x) = (quality(x) - weak quality) / (strong quality - weak quality)``.
* ``APGR``: area under ``PGR(x)`` for ``x`` in ``[0, 1]`` (random routing = 0.5).
* ``CPT(p)``: smallest strong-call share whose PGR reaches ``p``.

Ties in the score are resolved by their expectation under a random tie-break, so a constant
score is exactly the random router (``PGR(x) = x``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from policies.router.curve import pgr_points

FloatArray = NDArray[np.float64]

__all__ = [
    "PGRCurve",
    "RouterMetrics",
    "apgr",
    "cpt",
    "perfect_curve",
    "pgr_curve",
    "random_curve",
    "summarize",
]


@dataclass(frozen=True)
class PGRCurve:
    """A PGR curve sampled at every prompt boundary.

    ``shares[k]`` is the share of strong calls after routing the ``k`` highest-scored prompts and
    ``pgr[k]`` the performance gap recovered there; ``thresholds[k]`` is the score of the ``k``-th
    prompt (``+inf`` for ``k = 0``), i.e. routing ``score >= thresholds[k]`` realises point ``k``.
    """

    shares: FloatArray
    pgr: FloatArray
    thresholds: FloatArray


@dataclass(frozen=True)
class RouterMetrics:
    """Summary numbers of one PGR curve (CPT values are shares in [0, 1], NaN when never reached)."""

    n: int
    weak_quality: float
    strong_quality: float
    apgr: float
    cpt50: float
    cpt80: float


def _as_1d(x: ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def pgr_curve(
    scores: ArrayLike,
    weak: ArrayLike,
    strong: ArrayLike,
    weights: ArrayLike | None = None,
) -> PGRCurve:
    """Return the PGR curve of routing by ``scores`` (higher = send to strong first).

    ``weak``/``strong`` are per-prompt qualities of each model's answer (correctness, judge
    score, ...). ``weights`` optionally weights prompts (default 1). Tied scores contribute their
    expected gain under a random order. If the strong model is not better than the weak one on
    this data the gap is undefined and ``pgr`` is all NaN. (Computed by :func:`curve.pgr_points`.)
    """
    points = pgr_points(
        _as_1d(scores, "scores").tolist(),
        _as_1d(weak, "weak").tolist(),
        _as_1d(strong, "strong").tolist(),
        None if weights is None else _as_1d(weights, "weights").tolist(),
    )
    return PGRCurve(
        shares=np.asarray(points.shares), pgr=np.asarray(points.pgr), thresholds=np.asarray(points.thresholds)
    )


def apgr(curve: PGRCurve) -> float:
    """Area under the PGR curve over strong-call shares 0..1 (trapezoidal rule)."""
    x, y = curve.shares, curve.pgr
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def cpt(curve: PGRCurve, target: float) -> float:
    """Smallest strong-call share at which PGR reaches ``target`` (linear interpolation).

    Returns NaN when the curve never reaches ``target``.
    """
    y = curve.pgr
    hit = np.nonzero(y >= target - 1e-12)[0]
    if hit.size == 0:
        return float("nan")
    k = int(hit[0])
    if k == 0:
        return 0.0
    x0, x1, y0, y1 = curve.shares[k - 1], curve.shares[k], y[k - 1], y[k]
    if y1 <= y0:
        return float(x1)
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def random_curve(weak: ArrayLike, strong: ArrayLike, weights: ArrayLike | None = None) -> PGRCurve:
    """Expected PGR curve of a random router (``PGR(x) = x``; APGR 0.5, CPT(p) = p)."""
    n = _as_1d(weak, "weak").size
    return pgr_curve(np.zeros(n), weak, strong, weights)


def perfect_curve(weak: ArrayLike, strong: ArrayLike, weights: ArrayLike | None = None) -> PGRCurve:
    """PGR curve of the oracle router that knows each prompt's quality gap (the upper bound)."""
    gap = _as_1d(strong, "strong") - _as_1d(weak, "weak")
    return pgr_curve(gap, weak, strong, weights)


def summarize(curve: PGRCurve, weak: ArrayLike, strong: ArrayLike) -> RouterMetrics:
    """APGR, CPT(50%) and CPT(80%) of ``curve`` plus the (unweighted) model qualities."""
    w_q = _as_1d(weak, "weak")
    s_q = _as_1d(strong, "strong")
    return RouterMetrics(
        n=int(w_q.size),
        weak_quality=float(w_q.mean()),
        strong_quality=float(s_q.mean()),
        apgr=apgr(curve),
        cpt50=cpt(curve, 0.5),
        cpt80=cpt(curve, 0.8),
    )
