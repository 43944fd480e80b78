"""Policies are pure functions of their candidates: each ranks by its own criterion and says why."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import pytest

from policies import registry
from policies.base import Candidate, RoutingInput, fixed, fmt_usd


def cand(name: str, cost: str, latency: float, quality: float, **kw: object) -> Candidate:
    return Candidate(name=name, cost_usd=Decimal(cost), latency_s=latency, quality=quality, base_quality=quality, **kw)  # type: ignore[arg-type]


SMALL = cand("small", "0.00001", 0.8, 7.6, is_local=True)
MEDIUM = cand("medium", "0.00003", 1.4, 7.9, is_local=True)
BIG = cand("big", "0.006", 2.5, 9.4)


def rank(policy: str, cands: list[Candidate], **kw: object) -> list[str]:
    decision = registry.get(policy)().rank(RoutingInput(**kw), cands)  # type: ignore[arg-type]
    assert decision.reason
    assert sorted(c.name for c in decision.ranking) == sorted(c.name for c in cands)
    return [c.name for c in decision.ranking]


def test_registry_has_the_builtin_policies() -> None:
    assert {"cost", "latency", "quality", "balanced"} <= registry.names()
    with pytest.raises(KeyError):
        registry.get("magic")


def test_cost_picks_cheapest_good_enough() -> None:
    assert rank("cost", [BIG, MEDIUM, SMALL]) == ["small", "medium", "big"]
    # a hard prompt: only the big model is predicted good enough
    hard_small = cand("small", "0.00001", 0.8, 5.1, is_local=True)
    hard_medium = cand("medium", "0.00003", 1.4, 5.6, is_local=True)
    assert rank("cost", [hard_small, hard_medium, BIG])[0] == "big"
    assert rank("cost", [BIG, MEDIUM, SMALL], min_quality=7.8)[0] == "medium"


def test_latency_picks_fastest_and_spills_over_when_saturated() -> None:
    assert rank("latency", [BIG, MEDIUM, SMALL]) == ["small", "medium", "big"]
    busy = cand("small", "0.00001", 0.8, 7.6, is_local=True, saturated=True)
    assert rank("latency", [BIG, MEDIUM, busy]) == ["medium", "big", "small"]


def test_quality_picks_best() -> None:
    assert rank("quality", [SMALL, MEDIUM, BIG]) == ["big", "medium", "small"]


def test_balanced_weights_move_the_choice() -> None:
    assert rank("balanced", [SMALL, MEDIUM, BIG], weights=(1.0, 1.0, 1.0))[0] == "small"
    assert rank("balanced", [SMALL, MEDIUM, BIG], weights=(10.0, 1.0, 1.0))[0] == "big"
    assert rank("balanced", [SMALL, MEDIUM, BIG], weights=(0.0, 0.0, 1.0))[0] == "small"


def test_single_candidate_is_ranked() -> None:
    for name in ("cost", "latency", "quality", "balanced"):
        assert rank(name, [BIG]) == ["big"]


def test_fixed_writes_what_the_float_formatter_writes() -> None:
    # Reasons format their figures with fixed() (int-to-str, cheap when the caches are cold): a reader must
    # see what "%.Nf" would show, except that an exact tie rounds up.
    rng = random.Random(0)
    for _ in range(20_000):
        places = rng.randrange(7)
        value = rng.choice([rng.random(), rng.uniform(0, 20), rng.uniform(0, 1e5), rng.uniform(-50, 50)])
        expected = f"{value:.{places}f}"
        tie = abs(abs(value) * 10**places % 1 - 0.5) < 1e-6
        if not tie:
            assert fixed(value, places) == expected, (value, places)
        else:
            assert abs(float(fixed(value, places)) - value) <= 0.5 / 10**places + 1e-9
    assert (fixed(0.125, 2), fixed(2.5, 0), fixed(0.0, 3), fixed(7.0, 2)) == ("0.13", "3", "0.000", "7.00")
    assert (fixed(-1.25, 1), fixed(1e300, 2), fixed(math.inf, 2)) == ("-1.3", f"{1e300:.2f}", "inf")
    assert fixed(math.nan, 1) == "nan"
    assert (fmt_usd(0.00138), fmt_usd(12.345)) == ("$0.001380", "$12.35")
    for _ in range(20_000):
        value = rng.choice([rng.random() * 1e-3, rng.random(), rng.uniform(0, 50)])
        places = 6 if value < 1 else 2
        if abs(value * 10**places % 1 - 0.5) >= 1e-6:  # not a tie
            assert fmt_usd(value) == f"${value:.{places}f}", value


def test_a_candidate_prices_its_tokens_only_when_its_exact_cost_is_asked_for() -> None:
    calls: list[tuple[int, int]] = []

    class Counting:
        def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
            calls.append((prompt_tokens, completion_tokens))
            return Decimal("0.000003") * prompt_tokens + Decimal("0.000006") * completion_tokens

    c = Candidate("m", None, 1.0, 8.0, 8.0, cost=0.00009, price=Counting(), tokens=(10, 10))
    assert c.cost == 0.00009 and calls == []
    assert c.cost_usd == Decimal("0.000090") and c.cost_usd == Decimal("0.00009") and calls == [(10, 10)]
    with pytest.raises(TypeError):
        Candidate("m", None, 1.0, 8.0, 8.0)
