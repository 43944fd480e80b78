"""The routing interface: a policy ranks candidates for one request and says why.

Policies are pure functions of their inputs: every live number they need (predicted cost, latency,
quality, load) arrives inside :class:`Candidate`, so they are trivially testable and ``gateway route
--explain`` and ``gateway replay`` reuse them unchanged.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Final, Protocol


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


class RoutingInput:
    """What a policy may know about the request itself.

    Plain classes with their own ``__init__``, not dataclasses, here and in :class:`Decision`: compiled, a
    dataclass's constructor runs the ``__init__`` the dataclass decorator generates, as interpreted Python,
    on every request.
    """

    __slots__ = (
        "difficulty",
        "expected_output_tokens",
        "min_quality",
        "prompt",
        "prompt_tokens",
        "strong_needed",
        "strong_threshold",
        "weights",
    )

    def __init__(
        self,
        prompt: str = "",
        prompt_tokens: int = 0,
        expected_output_tokens: int = 0,
        difficulty: float = 0.5,
        strong_needed: float | None = None,
        strong_threshold: float | None = None,
        weights: tuple[float, ...] = (1.0, 1.0, 1.0),
        min_quality: float | None = None,
    ) -> None:
        self.prompt = prompt
        self.prompt_tokens = prompt_tokens
        self.expected_output_tokens = expected_output_tokens
        self.difficulty = difficulty  # 0 easy .. 1 hard; from the learned router or the heuristic
        self.strong_needed = strong_needed  # learned router's P(strong model needed), when available
        self.strong_threshold = strong_threshold  # calibrated operating point for strong_needed
        self.weights = weights  # quality, cost, latency
        self.min_quality = min_quality

    def __repr__(self) -> str:
        return (
            f"RoutingInput(prompt_tokens={self.prompt_tokens}, expected_output_tokens={self.expected_output_tokens}, "
            f"difficulty={self.difficulty:.3f}, strong_needed={self.strong_needed}, "
            f"strong_threshold={self.strong_threshold}, weights={self.weights}, min_quality={self.min_quality})"
        )


class Decision:
    """Candidates in the order to try them, a short human-readable reason, and each candidate's score under
    the policy (by model name; for ``gateway route --explain``).

    The scores come as a dict, or as the candidates and their scores in the same order (``candidates`` and
    ``values``): the dict is then built when first read, since most requests never read it.
    """

    __slots__ = ("_candidates", "_scores", "_values", "policy", "ranking", "reason")

    def __init__(
        self,
        ranking: list[Candidate],
        reason: str,
        policy: str,
        scores: dict[str, float] | None = None,
        candidates: list[Candidate] | None = None,
        values: list[float] | None = None,
    ) -> None:
        self.ranking = ranking
        self.reason = reason
        self.policy = policy
        self._scores = scores
        self._candidates = candidates
        self._values = values

    @property
    def winner(self) -> Candidate:
        """The first choice."""
        return self.ranking[0]

    @property
    def scores(self) -> dict[str, float]:
        """Each candidate's score under the policy, by model name."""
        scores = self._scores
        if scores is None:
            scores = self._scores = {}
            if self._candidates is not None and self._values is not None:
                for c, v in zip(self._candidates, self._values, strict=True):
                    scores[c.name] = v
        return scores

    def __repr__(self) -> str:
        return f"Decision({self.policy!r}, {[c.name for c in self.ranking]}, reason={self.reason!r})"


class Policy(Protocol):
    """Ranks candidates (already filtered by hard constraints) for one request."""

    name: ClassVar[str]

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        """Return every candidate, best first, with the reason the winner won."""
        ...


class RankingPolicy:
    """Base class of the built-in policies (any class with the :class:`Policy` method is a policy too).

    The router calls policies through this class: compiled, that is a direct C call through the class's
    method table, where a call through the Protocol is a generic Python call (method lookup, argument
    parsing) on every request. A policy that does not subclass it is wrapped (:func:`as_ranking`).
    """

    name: ClassVar[str] = ""

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        """Return every candidate, best first, with the reason the winner won."""
        raise NotImplementedError


class _Wrapped(RankingPolicy):
    """A :class:`Policy` that is not a :class:`RankingPolicy`, called through its own method."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def rank(self, request: RoutingInput, candidates: list[Candidate]) -> Decision:
        return self.policy.rank(request, candidates)


def as_ranking(policy: Policy) -> RankingPolicy:
    """``policy`` itself when it subclasses :class:`RankingPolicy`, else wrapped in one."""
    return policy if isinstance(policy, RankingPolicy) else _Wrapped(policy)


def spill_saturated(ranking: list[Candidate]) -> list[Candidate]:
    """Move saturated candidates after the others, keeping each group's order (stable)."""
    return [c for c in ranking if not c.saturated] + [c for c in ranking if c.saturated]


_SCALES: Final = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
#: "0" to "999", and the zero-padded "000".."999": reasons write their figures by table lookup.
_INTS: Final = tuple([str(i) for i in range(1000)])
_PAD3: Final = tuple([str(1000 + i)[1:] for i in range(1000)])
#: Every figure with two decimals from "0.00" to "19.99" (utilities and quality scores), looked up whole.
_FIXED2: Final = tuple([f"{i // 100}.{str(100 + i % 100)[1:]}" for i in range(2000)])


def _int_str(n: int) -> str:
    return _INTS[n] if n < 1000 else str(n)


def fixed(value: float, places: int) -> str:
    """``value`` with ``places`` (0-6) decimals, as ``f"{value:.{places}f}"`` writes it except that ties round up.

    Built from integer arithmetic and table lookups: reasons are formatted on every request, and with the
    decision's code out of the CPU caches, as it is in the server, the float formatter was the costliest thing a
    decision ran (about 5 us of 20 in the gateway, ``bench/decision_share.sh``, 2026-12-02).
    """
    # The figures reasons write most, first: found in a table, with no arithmetic on strings.
    if places == 2:
        if 0.0 <= value < 19.995:
            return _FIXED2[int(value * 100.0 + 0.5)]
    elif places == 0 and 0.0 <= value < 999.5:
        return _INTS[int(value + 0.5)]
    if value < 0:
        return "-" + fixed(-value, places)
    if not value < 1e18:  # inf, nan, or beyond an exact int: rare, the float formatter is fine
        return f"{value:.{places}f}"
    scale = _SCALES[places]
    n = int(value * scale + 0.5)
    if scale == 1:
        return _int_str(n)
    whole = n // scale
    frac = n - whole * scale
    if places == 3:
        return f"{_int_str(whole)}.{_PAD3[frac]}"
    if places == 6:
        return f"{_int_str(whole)}.{_PAD3[frac // 1000]}{_PAD3[frac % 1000]}"
    return f"{_int_str(whole)}.{str(scale + frac)[1:]}"


def fmt_usd(value: float) -> str:
    """A short dollar figure for reasons (a float: a reason is for reading, and formatting a Decimal costs
    microseconds on every request)."""
    if 0.0 <= value < 0.9999995:  # the usual figure: "$0." and six digits
        n = int(value * 1_000_000.0 + 0.5)
        return f"$0.{_PAD3[n // 1000]}{_PAD3[n % 1000]}"
    return f"${fixed(value, 6 if value < 1 else 2)}"
