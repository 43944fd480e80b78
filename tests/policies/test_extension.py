"""Routing is open to a user's own parts: a policy defined the one way (a Policy subclass, registered by name)
and any quality estimator work as the built-in ones do; the registry cannot lose or hide the built-ins."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, ClassVar

import pytest

from backends import CircuitBreaker
from gateway.config import settings_from_dict
from gateway.constraints import Constraints
from gateway.features import extract_features
from gateway.routing import Router
from gateway.tokens import ApproxCounter
from policies import registry
from policies.base import Candidate, Decision, Policy, RoutingInput
from tests.helpers.servers import REPO_ROOT
from tests.helpers.upstream import routing_backends

MODELS: list[dict[str, Any]] = [
    {"name": "small", "backend": "openai", "base_url": "http://a/v1", "quality": 6.0, "input_cost_per_token": 1e-7},
    {"name": "big", "backend": "openai", "base_url": "http://b/v1", "quality": 9.0, "input_cost_per_token": 1e-5},
]


class LongestName(Policy):
    """A user's policy: the longest model name first."""

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
    # a copy of the registry (built-ins loaded) for this test: the policy is gone again afterwards
    monkeypatch.setattr(registry, "_REGISTRY", {n: registry.get(n) for n in registry.names()})
    registry.register("longest-name")(LongestName)
    LongestName.seen.clear()
    yield


def router(routes: dict[str, Any], estimator: Any = None) -> Router:
    settings = settings_from_dict({"models": MODELS, "routes": routes})
    backends = routing_backends(settings)
    return Router(settings, backends, {n: CircuitBreaker() for n in backends}, estimator)


def plan(r: Router, route: str, prompt: str, constraints: Constraints | None = None) -> Decision:
    feats = extract_features("chat", {"messages": [{"role": "user", "content": prompt}]}, ApproxCounter())
    return r.plan(route, feats, constraints or Constraints()).decision


def test_a_users_policy_routes_by_route_and_by_header(custom_policy: None) -> None:
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
    assert isinstance(r.policy("longest-name"), LongestName)
    assert LongestName.name == "longest-name"  # set by the registry


def test_a_taken_name_is_refused_unless_replacing_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", {n: registry.get(n) for n in registry.names()})
    builtin = registry.get("cost")

    class MyCost(LongestName):
        pass

    with pytest.raises(ValueError, match="'cost' is registered already"):
        registry.register("cost")(MyCost)
    assert registry.get("cost") is builtin
    registry.register("cost", replace=True)(MyCost)  # explicit
    assert registry.get("cost") is MyCost
    registry.register("cost", replace=True)(builtin)
    assert registry.register("cost")(builtin) is builtin  # the same class again is no conflict


def test_only_policy_subclasses_register() -> None:
    class NotAPolicy:
        def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
            return Decision(candidates, "", "x")

    with pytest.raises(TypeError, match=r"not a subclass of policies\.base\.Policy"):
        registry.register("not-a-policy")(NotAPolicy)  # type: ignore[type-var]
    assert "not-a-policy" not in registry.names()


def test_a_policy_registered_first_does_not_hide_the_builtins() -> None:
    # A fresh interpreter: the user's policy is the registry's very first registration.
    script = """
from policies.base import Decision, Policy
from policies.registry import get, names, register

@register("mine")
class Mine(Policy):
    def rank(self, request, candidates):
        return Decision(candidates, "mine", self.name)

print(sorted(names()), get("balanced").__name__)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "['balanced', 'cascade', 'cost', 'latency', 'learned', 'mine', 'quality'] BalancedPolicy"


def test_a_quality_estimator_of_ones_own_drives_the_decision() -> None:
    easy, hard = FixedDifficulty(0.1), FixedDifficulty(0.9)
    routes = {"r": {"policy": "learned", "strong_share": 0.5}}
    assert plan(router(routes, easy), "r", "what is 2+2?").winner.name == "small"
    assert plan(router(routes, hard), "r", "what is 2+2?").winner.name == "big"
    assert easy.prompts == ["what is 2+2?"]


def test_a_decision_carries_each_candidates_score() -> None:
    a = Candidate("a", Decimal(0), 1.0, 6.0, 6.0)
    b = Candidate("b", Decimal(0), 2.0, 7.0, 7.0)
    assert Decision([a], "only", "test").scores == {}
    assert Decision([a], "only", "test", {"a": 1.0}).scores == {"a": 1.0}
    # the default policy's scores are its utilities, by model name
    decision = registry.get("balanced")().rank(RoutingInput(), [a, b])
    assert set(decision.scores) == {"a", "b"} and decision.scores[decision.winner.name] == max(decision.scores.values())
