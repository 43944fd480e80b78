"""The routing interface: a policy ranks candidates for one request and says why.

Policies are pure functions of their inputs: every live number they need (predicted cost, latency,
quality, load) arrives inside :class:`Candidate`, so they are trivially testable and ``gateway route
--explain`` and ``gateway replay`` reuse them unchanged.

To add a policy, subclass :class:`Policy`, implement :meth:`Policy.rank`, and register the class under a
name with :func:`policies.registry.register` (RouteLLM's shape: one abstract method and a registry)::

    @register("shortest-queue")
    class ShortestQueue(Policy):
        def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
            ranking = sorted(candidates, key=lambda c: c.load)
            return Decision(ranking, f"least loaded: {ranking[0].name}", self.name)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar


@dataclass(slots=True)
class Candidate:
    """One model that could serve the request, with predictions for this request.

    The predicted cost is exact money (:attr:`cost_usd`, what :func:`gateway.pricing.Price.cost` gives for the
    predicted tokens) and, for ranking, the same figure as a float (:attr:`cost`).
    """

    name: str
    cost_usd: Decimal
    latency_s: float  # predicted completion time, queueing included
    quality: float  # predicted answer quality for this prompt, 0-10 (MT-Bench-like)
    base_quality: float  # the model's configured score, before the prompt's difficulty
    is_local: bool = False
    saturated: bool = False  # its queue is full: spill over to others first
    load: float = 0.0  # requests it is busy with (ours in flight, or vLLM's queue)
    cost: float = field(init=False)

    def __post_init__(self) -> None:
        self.cost = float(self.cost_usd)


@dataclass(slots=True)
class RoutingInput:
    """What a policy may know about the request itself."""

    prompt: str = ""
    prompt_tokens: int = 0
    expected_output_tokens: int = 0
    difficulty: float = 0.5  # 0 easy .. 1 hard; from the learned router or the heuristic
    strong_needed: float | None = None  # the learned router's P(strong model needed), when there is one
    strong_threshold: float | None = None  # the route's calibrated operating point for strong_needed
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # quality, cost, latency
    min_quality: float | None = None


@dataclass(slots=True)
class Decision:
    """Candidates in the order to try them, a short human-readable reason, the policy's name, and each
    candidate's score under the policy by model name (for ``gateway route --explain``)."""

    ranking: list[Candidate]
    reason: str
    policy: str
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def winner(self) -> Candidate:
        """The first choice."""
        return self.ranking[0]


class Policy(ABC):
    """Ranks candidates (already filtered by hard constraints) for one request.

    :attr:`name` is set by :func:`policies.registry.register`. Instances are built once per router and
    called for every request: keep them free of per-request state.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        """Return every candidate, best first, with the reason the winner won."""


def spill_saturated(ranking: list[Candidate]) -> list[Candidate]:
    """Move saturated candidates after the others, keeping each group's order (stable)."""
    return sorted(ranking, key=lambda c: c.saturated)


def usd(value: float) -> str:
    """A dollar figure for reasons: six decimals below a dollar, cents above."""
    return f"${value:.6f}" if value < 1 else f"${value:.2f}"
