"""What the semantic cache learns from checked hits: false-hit rates, adaptive thresholds, per-entry bounds.

The seam between the cache and whoever judges its hits (the quality monitor). Every semantic decision
with a candidate is a :class:`Decision`; a sampled share of them is opened for checking (:meth:`Learner.sample`):

- **served hits**, with probability ``check_rate``: the monitor also sends the request to the model and
  asks a judge whether the cached answer serves the new question;
- **candidates not served** (below the threshold in force, or on a route still learning), with
  probability ``explore_rate``: the request went to the model anyway, so the judge compares for free.

The monitor reports each verdict with :meth:`Learner.record_outcome` ``(hit_id, correct)``. Each
observation carries the weight ``1 / sampling probability``, so the weighted share of wrong answers among
the candidates scoring at least ``t`` estimates, without bias, the error a threshold ``t`` would serve.

**False-hit rate.** Per route, over the newest ``window`` checked served hits: the share judged wrong, with
a 95% Wilson interval (:class:`Estimate`).

**Error bound.** A route with ``semantic_max_error: e`` serves a candidate only at or above the lowest
threshold ``t`` whose one-sided 95% upper confidence bound on the weighted error among observed candidates
scoring ``>= t`` is at most ``e`` (Wilson, on the Kish effective sample size). Until the observations
support some threshold (with no wrong answer at all, about ``3.84 / e`` of them: 190 for 2%), the route
serves no semantic hit: a cold route misses, and explores. The threshold is re-derived after every
outcome, so a drift towards wrong answers raises it.

**Per entry** (after vCache, ICLR 2026: every cached prompt has its own decision boundary): an entry judged
wrong at similarity ``s`` serves later queries only above ``s`` (+ ``entry_margin``), whatever the route's
threshold; entries that were never judged wrong use the route's. Boundaries only ever rise, so they never
weaken the route's bound.

Thread-safe (one lock): decisions come from the event loop, outcomes from wherever the judge runs.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

_Z95_TWO_SIDED = 1.959964
_Z95_ONE_SIDED = 1.644854


@dataclass(frozen=True, slots=True)
class RouteRules:
    """A route's semantic settings: a fixed threshold, or an error bound that chooses it."""

    threshold: float
    max_error: float | None = None
    floor: float = 0.75  # candidates below this similarity are neither served nor explored


@dataclass(frozen=True, slots=True)
class Estimate:
    """A share with its 95% confidence interval (Wilson) and the number of observations behind it."""

    rate: float | None
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready."""
        return {"rate": self.rate, "ci95_low": self.low, "ci95_high": self.high, "checked": self.n}


def wilson(wrong: float, n: float, z: float = _Z95_TWO_SIDED) -> tuple[float, float]:
    """Wilson score interval for ``wrong / n`` (``n`` may be an effective, non-integral size)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(wrong / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(slots=True)
class Decision:
    """One semantic lookup that found a candidate: what it scored, what was in force, what was done."""

    route: str
    entry_key: str
    score: float
    threshold: float | None  # None: the route had no verified threshold yet (cold)
    verdict: str  # the verifier's reason ("pass", or why it rejected)
    served: bool
    id: str = field(default_factory=lambda: "sh-" + secrets.token_hex(8))
    weight: float = 1.0  # 1 / the probability it was sampled for checking
    at: float = field(default_factory=time.time)

    def explain(self) -> str:
        """One line for the request log and the ``x-gateway-reason`` header."""
        if self.threshold is None:
            rule = "no threshold verified yet (route learning)"
        else:
            rule = f"threshold {self.threshold:.4f}"
        outcome = "served" if self.served else "not served"
        return f"semantic {outcome}: similarity {self.score:.4f}, {rule}, verifier {self.verdict}"


class _Route:
    """One route's observations (a sliding window) and the threshold they support."""

    def __init__(self, rules: RouteRules, window: int) -> None:
        self.rules = rules
        # observations as a ring buffer: similarity, weight, wrong?
        self._scores = np.zeros(window, dtype=np.float64)
        self._weights = np.zeros(window, dtype=np.float64)
        self._wrong = np.zeros(window, dtype=bool)
        self._next = 0
        self.observed = 0
        self.served: deque[bool] = deque(maxlen=window)  # checked served hits: wrong?
        self.adaptive: float | None = None
        self.decisions = 0
        self.hits = 0

    def threshold(self) -> float | None:
        if self.rules.max_error is None:
            return self.rules.threshold
        return self.adaptive

    def observe(self, score: float, wrong: bool, weight: float) -> None:
        i = self._next
        self._scores[i], self._wrong[i], self._weights[i] = score, wrong, weight
        self._next = (i + 1) % len(self._scores)
        self.observed = min(self.observed + 1, len(self._scores))

    def refit(self, grid: np.ndarray) -> None:
        """The lowest grid threshold whose upper error bound (over candidates scoring >= it) meets the bound."""
        n = self.observed
        if self.rules.max_error is None or n == 0:
            self.adaptive = None
            return
        scores, w, bad = self._scores[:n], self._weights[:n], self._wrong[:n]
        order = np.argsort(-scores, kind="stable")
        scores, w, bad = scores[order], w[order], bad[order]
        cw, cw2, cbad = np.cumsum(w), np.cumsum(w * w), np.cumsum(np.where(bad, w, 0.0))
        k = np.searchsorted(-scores, -grid, side="right")  # per threshold: observations scoring >= it
        has = k > 0
        if not has.any():
            self.adaptive = None
            return
        i = k[has] - 1
        n_eff = cw[i] ** 2 / cw2[i]
        p = cbad[i] / cw[i]
        z2 = _Z95_ONE_SIDED**2
        upper = (p + z2 / (2 * n_eff) + _Z95_ONE_SIDED * np.sqrt(p * (1 - p) / n_eff + z2 / (4 * n_eff**2))) / (
            1 + z2 / n_eff
        )
        ok = grid[has][upper <= self.rules.max_error]
        self.adaptive = float(ok.min()) if ok.size else None

    def false_hits(self) -> Estimate:
        n = len(self.served)
        if n == 0:
            return Estimate(None, 0.0, 1.0, 0)
        wrong = sum(self.served)
        low, high = wilson(wrong, n)
        return Estimate(wrong / n, low, high, n)


class Learner:
    """The outcome API and the decisions it shapes (see the module docstring)."""

    def __init__(
        self,
        routes: dict[str, RouteRules],
        *,
        check_rate: float = 0.05,
        explore_rate: float = 0.25,
        window: int = 5000,
        entry_margin: float = 0.005,
        max_pending: int = 10_000,
        pending_ttl_s: float = 3600.0,
        max_entries: int = 100_000,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.check_rate = check_rate
        self.explore_rate = explore_rate
        self.entry_margin = entry_margin
        self.max_pending = max_pending
        self.pending_ttl_s = pending_ttl_s
        self.max_entries = max_entries
        self._routes = {name: _Route(rules, window) for name, rules in routes.items()}
        self._pending: OrderedDict[str, Decision] = OrderedDict()
        self._entries: OrderedDict[str, float] = OrderedDict()  # entry key -> lowest similarity it may serve at
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        lows = [r.floor for r in routes.values()] or [0.75]
        self._grid = np.round(np.arange(1.0, min(lows) - 1e-9, -0.0025), 4)

    # -- the request path ----------------------------------------------------------------------------

    def rules(self, route: str) -> RouteRules | None:
        """The route's settings (None: not a semantic route)."""
        r = self._routes.get(route)
        return None if r is None else r.rules

    def decide(self, route: str, entry_key: str, score: float, verdict: str, verified: bool) -> Decision:
        """Serve the candidate or not: the verifier passed, and the similarity reaches both the route's
        threshold in force and the entry's own boundary."""
        with self._lock:
            r = self._routes[route]
            threshold = r.threshold()
            entry_bound = self._entries.get(entry_key)
            if threshold is not None and entry_bound is not None and entry_bound > threshold:
                threshold = entry_bound
        served = verified and threshold is not None and score >= threshold
        return Decision(route, entry_key, score, threshold, verdict, served)

    def count(self, route: str, *, served: bool) -> None:
        """Count one lookup of ``route`` that found a candidate (and whether it served a hit)."""
        with self._lock:
            r = self._routes[route]
            r.decisions += 1
            r.hits += served

    def sample(self, decision: Decision) -> bool:
        """Whether to check ``decision`` (and if so, open it for :meth:`record_outcome`).

        Served hits are sampled at ``check_rate``; candidates that passed the verifier but were not served
        (and score at least the route's floor) at ``explore_rate``, on routes with an error bound only (a
        fixed threshold learns nothing from them). Verifier rejects are never sampled.
        """
        rules = self.rules(decision.route)
        if rules is None or decision.verdict != "pass" or decision.score < rules.floor:
            return False
        if not decision.served and rules.max_error is None:
            return False
        rate = self.check_rate if decision.served else self.explore_rate
        if rate <= 0 or self._rng.random() >= rate:
            return False
        decision.weight = 1.0 / rate
        with self._lock:
            self._expire()
            self._pending[decision.id] = decision
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
        return True

    # -- the outcome API -----------------------------------------------------------------------------

    def record_outcome(self, hit_id: str, correct: bool) -> bool:
        """Record the judge's verdict on an opened decision; False if the id is unknown or expired."""
        with self._lock:
            self._expire()
            d = self._pending.pop(hit_id, None)
            if d is None:
                return False
            r = self._routes.get(d.route)
            if r is None:
                return False
            r.observe(d.score, not correct, d.weight)
            if d.served:
                r.served.append(not correct)
            if not correct:
                bound = min(1.0, d.score + self.entry_margin)
                self._entries[d.entry_key] = max(bound, self._entries.get(d.entry_key, 0.0))
                self._entries.move_to_end(d.entry_key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            r.refit(self._grid)
            return True

    def pending(self, hit_id: str) -> Decision | None:
        """The open decision ``hit_id``, if it awaits an outcome."""
        with self._lock:
            return self._pending.get(hit_id)

    def false_hit_rate(self, route: str) -> Estimate:
        """The route's measured share of wrong semantic hits (newest ``window`` checked hits), 95% CI."""
        with self._lock:
            r = self._routes.get(route)
            return Estimate(None, 0.0, 1.0, 0) if r is None else r.false_hits()

    def threshold(self, route: str) -> float | None:
        """The threshold in force for ``route`` (None: none verified yet, so no semantic hits)."""
        with self._lock:
            r = self._routes.get(route)
            return None if r is None else r.threshold()

    def report(self) -> dict[str, dict[str, object]]:
        """Per route: the threshold in force, the error bound, decisions, hits and the false-hit rate."""
        with self._lock:
            out: dict[str, dict[str, object]] = {}
            for name, r in self._routes.items():
                out[name] = {
                    "threshold": r.threshold(),
                    "max_error": r.rules.max_error,
                    "adaptive": r.rules.max_error is not None,
                    "decisions": r.decisions,
                    "semantic_hits": r.hits,
                    "observations": r.observed,
                    "false_hit_rate": r.false_hits().as_dict(),
                }
            return out

    def _expire(self) -> None:
        cutoff = self._clock() - self.pending_ttl_s
        while self._pending:
            first = next(iter(self._pending.values()))
            if first.at >= cutoff:
                break
            self._pending.popitem(last=False)
