"""Routing is open to a user's own parts: a policy that only has the Protocol's method, and any quality
estimator, work as the built-in ones do (the built-ins take a faster, compiled path; these must not)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any, ClassVar

import pytest

from backends import CircuitBreaker
from gateway.config import settings_from_dict
from gateway.context import Constraints
from gateway.features import extract_features
from gateway.routing import Router
from gateway.tokens import ApproxCounter
from policies import registry
from policies.base import Candidate, Decision, RankingPolicy, RoutingInput, as_ranking
from tests.helpers.upstream import routing_backends

MODELS: list[dict[str, Any]] = [
    {"name": "small", "backend": "openai", "base_url": "http://a/v1", "quality": 6.0, "input_cost_per_token": 1e-7},
    {"name": "big", "backend": "openai", "base_url": "http://b/v1", "quality": 9.0, "input_cost_per_token": 1e-5},
]


class LongestName:
    """A policy with the Protocol's method and nothing else (no RankingPolicy base)."""

    name: ClassVar[str] = "longest-name"
    seen: ClassVar[list[RoutingInput]] = []

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        LongestName.seen.append(request)
        ranking = sorted(candidates, key=lambda c: -len(c.name))
        return Decision(ranking, f"longest name: {ranking[0].name}", self.name, {c.name: len(c.name) for c in ranking})


class FixedDifficulty:
    """A quality estimator of the user's own: every prompt is as hard as it says."""

    def __init__(self, difficulty: float) -> None:
        self.difficulty = difficulty
        self.prompts: list[str] = []

    def score(self, prompt: str, ids: list[int] | None = None) -> float:
        self.prompts.append(prompt)
        return self.difficulty

    def threshold_for_strong_share(self, share: float) -> float:
        return 1.0 - share

    def threshold_for_quality_target(self, target_pgr: float) -> float:
        return 0.5


@pytest.fixture
def custom_policy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    registry.names()  # the built-ins first, so the registry is not taken for empty
    monkeypatch.setitem(registry._REGISTRY, LongestName.name, LongestName)
    LongestName.seen.clear()
    yield


def router(routes: dict[str, Any], estimator: Any = None) -> Router:
    settings = settings_from_dict({"models": MODELS, "routes": routes})
    backends = routing_backends(settings)
    return Router(settings, backends, {n: CircuitBreaker() for n in backends}, estimator)


def plan(r: Router, route: str, prompt: str, constraints: Constraints | None = None) -> Decision:
    feats = extract_features("chat", {"messages": [{"role": "user", "content": prompt}]}, ApproxCounter())
    return r.plan(route, feats, constraints or Constraints()).decision


def test_a_policy_with_only_the_protocol_method_routes_by_route_and_by_header(custom_policy: None) -> None:
    r = router({"mine": {"policy": "longest-name"}, "cheap": {"policy": "cost"}})
    decision = plan(r, "mine", "hello")
    assert [c.name for c in decision.ranking] == ["small", "big"]
    assert (decision.reason, decision.policy, decision.scores) == (
        "longest name: small",
        "longest-name",
        {"small": 5, "big": 3},
    )
    assert LongestName.seen[-1].prompt == "hello"
    # named per request on a route whose own policy is another
    assert plan(r, "cheap", "hello", Constraints(policy="longest-name")).policy == "longest-name"
    assert isinstance(r.policy("longest-name"), RankingPolicy)


def test_as_ranking_keeps_a_ranking_policy_and_wraps_any_other() -> None:
    builtin = registry.get("balanced")()
    assert as_ranking(builtin) is builtin
    wrapped = as_ranking(LongestName())
    assert isinstance(wrapped, RankingPolicy)
    small = Candidate("small", None, 1.0, 6.0, 6.0, cost=0.0, price=_Free())
    assert wrapped.rank(RoutingInput(), [small]).winner is small


def test_a_quality_estimator_of_ones_own_drives_the_decision() -> None:
    easy, hard = FixedDifficulty(0.1), FixedDifficulty(0.9)
    routes = {"r": {"policy": "learned", "strong_share": 0.5}}
    assert plan(router(routes, easy), "r", "what is 2+2?").winner.name == "small"
    assert plan(router(routes, hard), "r", "what is 2+2?").winner.name == "big"
    assert easy.prompts == ["what is 2+2?"]


def test_decision_scores_are_built_from_candidates_and_values_when_read() -> None:
    a = Candidate("a", None, 1.0, 6.0, 6.0, cost=0.0, price=_Free())
    b = Candidate("b", None, 2.0, 7.0, 7.0, cost=0.0, price=_Free())
    lazy = Decision([b, a], "b first", "test", None, [a, b], [0.25, 0.75])
    assert lazy.scores == {"a": 0.25, "b": 0.75}
    assert lazy.scores is lazy.scores  # built once
    assert Decision([a], "only", "test").scores == {}
    assert Decision([a], "only", "test", {"a": 1.0}).scores == {"a": 1.0}
    # the default policy's scores are its utilities, by model name
    decision = registry.get("balanced")().rank(RoutingInput(), [a, b])
    assert set(decision.scores) == {"a", "b"} and decision.scores[decision.winner.name] == max(decision.scores.values())


class _Free:
    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return Decimal(0)
