"""The outcome API: false-hit rates converge to the truth, the error bound holds, cold routes miss.

A simulated stream of candidates: similarity ``s`` uniform in [0.75, 1], and a cached answer that serves
the new question with probability ``sigmoid(60 (s - 0.88))`` (the judge's verdict is drawn from it).
The truth of any threshold is then known exactly, so each claim is checked against it.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from cache.learn import Learner, RouteRules, wilson

LOW = 0.75


def p_correct(s: float) -> float:
    return 1.0 / (1.0 + math.exp(-60.0 * (s - 0.88)))


def true_error(threshold: float) -> float:
    """The share of wrong answers among candidates scoring >= threshold (s uniform in [LOW, 1])."""
    grid = np.linspace(threshold, 1.0, 2001)
    return float(np.mean([1.0 - p_correct(s) for s in grid]))


def drive(learner: Learner, route: str, n: int, seed: int) -> list[tuple[bool, bool]]:
    """``n`` lookups; every sampled decision is judged. Returns (served, correct) per lookup."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = rng.uniform(LOW, 1.0)
        correct = rng.random() < p_correct(s)
        d = learner.decide(route, f"e:{i % 500}", s, "pass", True)
        learner.count(route, served=d.served)
        if learner.sample(d):
            assert learner.record_outcome(d.id, correct)
        out.append((d.served, correct))
    return out


def test_wilson_interval() -> None:
    low, high = wilson(5, 100)
    assert low == pytest.approx(0.0215, abs=1e-3) and high == pytest.approx(0.1118, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_false_hit_rate_converges_to_the_truth() -> None:
    learner = Learner({"faq": RouteRules(threshold=0.85, floor=LOW)}, check_rate=0.3, rng=random.Random(1))
    history = drive(learner, "faq", 12_000, seed=2)
    served = [correct for s, correct in history if s]
    truth = 1 - sum(served) / len(served)  # the share of wrong answers users actually got
    # (below the threshold's own error: entries judged wrong stopped serving the similarities that failed)
    assert truth < true_error(0.85)
    est = learner.false_hit_rate("faq")
    assert est.n > 500 and est.rate is not None
    assert est.low <= truth <= est.high
    assert abs(est.rate - truth) < 0.03
    assert est.high - est.low < 0.06
    report = learner.report()["faq"]
    assert report["threshold"] == 0.85 and report["adaptive"] is False


@pytest.mark.parametrize("max_error", [0.02, 0.05])
def test_adaptive_threshold_meets_the_error_bound(max_error: float) -> None:
    learner = Learner(
        {"faq": RouteRules(threshold=0.85, max_error=max_error, floor=LOW)},
        check_rate=0.2,
        explore_rate=0.5,
        rng=random.Random(3),
    )
    assert learner.threshold("faq") is None  # cold: no threshold verified
    history = drive(learner, "faq", 20_000, seed=4)
    first = history[:100]
    assert not any(served for served, _ in first)  # a cold route errs towards misses
    t = learner.threshold("faq")
    assert t is not None
    assert true_error(t) <= max_error  # the threshold in force meets the bound on the true distribution
    late = [correct for served, correct in history[10_000:] if served]
    assert len(late) > 1000  # and still serves hits
    assert 1 - sum(late) / len(late) <= max_error * 1.15  # the served error, measured over the truth
    # not far more cautious than needed: the lowest threshold meeting the bound is close
    best = min(x for x in np.arange(LOW, 1.0, 0.0025) if true_error(float(x)) <= max_error)
    assert t - best < 0.03
    est = learner.false_hit_rate("faq")
    assert est.rate is not None and est.high < 3 * max_error


def test_a_drift_towards_wrong_answers_raises_the_threshold() -> None:
    learner = Learner(
        {"faq": RouteRules(threshold=0.85, max_error=0.05, floor=LOW)},
        check_rate=0.5,
        explore_rate=0.5,
        window=1000,
        rng=random.Random(5),
    )
    drive(learner, "faq", 4000, seed=6)
    before = learner.threshold("faq")
    assert before is not None
    rng = random.Random(7)
    for i in range(4000):  # now every candidate under 0.97 is wrong
        s = rng.uniform(LOW, 1.0)
        d = learner.decide("faq", f"x:{i}", s, "pass", True)
        if learner.sample(d):
            learner.record_outcome(d.id, s >= 0.97)
    after = learner.threshold("faq")
    assert after is None or after >= 0.96


def test_an_entry_judged_wrong_gets_its_own_boundary() -> None:
    learner = Learner({"faq": RouteRules(threshold=0.85, floor=LOW)}, check_rate=1.0, rng=random.Random(0))
    d = learner.decide("faq", "e:1", 0.90, "pass", True)
    assert d.served and learner.sample(d)
    assert learner.record_outcome(d.id, False)
    assert not learner.decide("faq", "e:1", 0.90, "pass", True).served
    assert learner.decide("faq", "e:1", 0.91, "pass", True).served
    assert learner.decide("faq", "e:2", 0.86, "pass", True).served  # other entries keep the route's threshold
    assert not learner.decide("faq", "e:2", 0.95, "numbers differ", False).served


def test_outcomes_need_an_open_decision() -> None:
    now = [1000.0]
    learner = Learner(
        {"faq": RouteRules(threshold=0.85)},
        check_rate=1.0,
        pending_ttl_s=60,
        rng=random.Random(0),
        clock=lambda: now[0],
    )
    assert not learner.record_outcome("sh-unknown", True)
    d = learner.decide("faq", "e:1", 0.9, "pass", True)
    d.at = now[0]
    assert learner.sample(d) and learner.pending(d.id) is d
    assert learner.record_outcome(d.id, True)
    assert not learner.record_outcome(d.id, True)  # once
    d2 = learner.decide("faq", "e:1", 0.9, "pass", True)
    d2.at = now[0]
    assert learner.sample(d2)
    now[0] += 61
    assert not learner.record_outcome(d2.id, True)  # expired
    rejected = learner.decide("faq", "e:1", 0.99, "numbers differ", False)
    assert not learner.sample(rejected)  # verifier rejects are never sampled
