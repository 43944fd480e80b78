"""The routing interface: a policy ranks candidates for one request and says why.

Policies are pure functions of their inputs: every live number they need (predicted cost, latency,
quality, load) arrives inside :class:`Candidate`, so they are trivially testable and ``gateway route
--explain`` and ``gateway replay`` reuse them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar, Protocol


@dataclass(slots=True)  # not frozen: frozen dataclasses cost ~3x to build, and one is built per candidate
class Candidate:
    """One model that could serve the request, with predictions for this request."""

    name: str
    cost_usd: Decimal  # predicted cost of this request on this model
    latency_s: float  # predicted completion time, queueing included
    quality: float  # predicted answer quality, 0-10 (MT-Bench-like)
    base_quality: float  # the model's configured score before the prompt's difficulty
    is_local: bool = False
    saturated: bool = False  # its queue is full: spill over to others first
    load: float = 0.0


@dataclass(slots=True)
class RoutingInput:
    """What a policy may know about the request itself."""

    prompt: str = ""
    prompt_tokens: int = 0
    expected_output_tokens: int = 0
    difficulty: float = 0.5  # 0 easy .. 1 hard; from the learned router or the heuristic
    strong_needed: float | None = None  # learned router's P(strong model needed), when available
    strong_threshold: float | None = None  # calibrated operating point for strong_needed
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # quality, cost, latency
    min_quality: float | None = None


@dataclass(slots=True)
class Decision:
    """Candidates in the order to try them, and a short human-readable reason."""

    ranking: list[Candidate]
    reason: str
    policy: str
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def winner(self) -> Candidate:
        """The first choice."""
        return self.ranking[0]


class Policy(Protocol):
    """Ranks candidates (already filtered by hard constraints) for one request."""

    name: ClassVar[str]

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        """Return every candidate, best first, with the reason the winner won."""
        ...


def spill_saturated(ranking: list[Candidate]) -> list[Candidate]:
    """Move saturated candidates after the others, keeping each group's order (stable)."""
    return [c for c in ranking if not c.saturated] + [c for c in ranking if c.saturated]


def fmt_usd(value: Decimal) -> str:
    """A short dollar figure for reasons (formatted as a float: a reason is for reading, and formatting a
    Decimal costs microseconds on every request)."""
    f = float(value)
    return f"${f:.6f}" if f < 1 else f"${f:.2f}"
