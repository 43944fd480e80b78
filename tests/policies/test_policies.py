"""Policies are pure functions of their candidates: each ranks by its own criterion and says why."""

from __future__ import annotations

from decimal import Decimal

import pytest

from policies import registry
from policies.base import Candidate, RoutingInput, usd


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


def test_reasons_write_their_figures_as_the_float_formatter_does() -> None:
    cost = registry.get("cost")().rank(RoutingInput(), [BIG, MEDIUM, SMALL])
    assert cost.reason == "cheapest good-enough model: small at $0.000010 (predicted quality 7.60 >= 7.00)"
    latency = registry.get("latency")().rank(RoutingInput(), [BIG, MEDIUM, SMALL])
    assert latency.reason == "fastest predicted completion: small in 800 ms (load 0)"
    quality = registry.get("quality")().rank(RoutingInput(), [BIG, MEDIUM, SMALL])
    assert quality.reason == "best predicted quality: big (9.40/10)"
    learned = registry.get("learned")().rank(RoutingInput(strong_needed=0.1234, strong_threshold=0.5), [BIG, SMALL])
    assert learned.reason == (
        "learned router: P(strong needed)=0.123 < threshold 0.500, the cheap model suffices: small ($0.000010)"
    )
    balanced = registry.get("balanced")().rank(RoutingInput(), [BIG, MEDIUM, SMALL])
    assert balanced.reason.startswith("best utility ") and "weights q1/c1/l1" in balanced.reason
    assert (usd(0.00138), usd(12.345), usd(1.0)) == ("$0.001380", "$12.35", "$1.00")


def test_a_candidates_float_cost_is_its_exact_cost() -> None:
    c = Candidate("m", Decimal("0.00009"), 1.0, 8.0, 8.0)
    assert c.cost == 0.00009 and c.cost_usd == Decimal("0.00009")
    with pytest.raises(TypeError):
        Candidate("m", None, 1.0, 8.0, 8.0)  # type: ignore[arg-type]  # a candidate without a predicted cost
