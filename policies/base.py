"""The routing interface: a policy ranks candidates for one request and says why.

Policies are pure functions of their inputs: every live number they need (predicted cost, latency,
quality, load) arrives inside :class:`Candidate`, so they are trivially testable and ``gateway route
--explain`` and ``gateway replay`` reuse them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar, Protocol


class Priced(Protocol):
    """What prices a candidate's tokens in exact money (``gateway.pricing.Price``)."""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """USD for this many prompt and completion tokens."""
        ...


class Candidate:
    """One model that could serve the request, with predictions for this request.

    The predicted cost is exact money (:attr:`cost_usd`, a Decimal) and, for ranking, the same figure as a
    float (:attr:`cost`). Instead of the Decimal, a candidate may carry its ``price`` and token counts: most
    requests only ever need the winner's Decimal, so the others' are never computed.
    """

    __slots__ = (
        "_cost_usd",
        "_price",
        "_tokens",
        "base_quality",
        "cost",
        "is_local",
        "latency_s",
        "load",
        "name",
        "quality",
        "saturated",
    )

    def __init__(
        self,
        name: str,
        cost_usd: Decimal | None,
        latency_s: float,
        quality: float,
        base_quality: float,
        is_local: bool = False,
        saturated: bool = False,
        load: float = 0.0,
        cost: float | None = None,
        price: Priced | None = None,
        tokens: tuple[int, int] = (0, 0),
    ) -> None:
        self.name = name
        self.latency_s = latency_s  # predicted completion time, queueing included
        self.quality = quality  # predicted answer quality, 0-10 (MT-Bench-like)
        self.base_quality = base_quality  # the model's configured score before the prompt's difficulty
        self.is_local = is_local
        self.saturated = saturated  # its queue is full: spill over to others first
        self.load = load
        self._cost_usd = cost_usd
        self._price = price
        self._tokens = tokens  # (prompt, completion): what ``price`` prices when cost_usd is None
        if cost_usd is None:
            if price is None or cost is None:
                raise TypeError("a Candidate without cost_usd needs its price and its float cost")
        elif cost is None:
            cost = float(cost_usd)
        self.cost = cost

    @property
    def cost_usd(self) -> Decimal:
        """Predicted cost of this request on this model, in USD."""
        value = self._cost_usd
        if value is None:
            price = self._price
            assert price is not None  # checked in __init__
            value = self._cost_usd = price.cost(self._tokens[0], self._tokens[1])
        return value

    def __repr__(self) -> str:
        return (
            f"Candidate({self.name!r}, cost={self.cost:.8g}, latency_s={self.latency_s:.4g}, "
            f"quality={self.quality:.3f}, saturated={self.saturated})"
        )


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


_SCALES = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)


def fixed(value: float, places: int) -> str:
    """``value`` with ``places`` (0-6) decimals, as ``f"{value:.{places}f}"`` writes it except that ties round up.

    Built from int-to-str conversions: reasons are formatted on every request, and with the decision's code out
    of the CPU caches, as it is in the server, the float formatter was the costliest thing a decision ran (about
    5 us of 20 in the gateway, ``bench/decision_share.sh``, 2026-12-02).
    """
    if value < 0:
        return "-" + fixed(-value, places)
    if not value < 1e18:  # inf, nan, or beyond an exact int: rare, the float formatter is fine
        return f"{value:.{places}f}"
    scale = _SCALES[places]
    n = int(value * scale + 0.5)
    if scale == 1:
        return str(n)
    whole = n // scale
    return str(whole) + "." + str(scale + n - whole * scale)[1:]


def fmt_usd(value: float) -> str:
    """A short dollar figure for reasons (a float: a reason is for reading, and formatting a Decimal costs
    microseconds on every request)."""
    return "$" + fixed(value, 6 if value < 1 else 2)
