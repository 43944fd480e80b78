"""Policies are pure functions of their candidates: each ranks by its own criterion and says why."""

from __future__ import annotations

from decimal import Decimal

import pytest

from policies import registry
from policies.base import Candidate, RoutingInput


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
