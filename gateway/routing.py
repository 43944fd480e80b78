"""The decide stage: resolve a route or model name to candidates, predict, filter, and rank.

For each candidate this module predicts the request's cost (Decimal), completion time (from live
per-backend moving averages and queue depth) and answer quality (the model's score adjusted by the
prompt's difficulty). Hard constraints (capabilities, context window, open breakers, the request's
cost/latency/quality limits) filter first, with a clear error naming the failed constraint; the policy
then only orders what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Protocol

from backends import Backend, CircuitBreaker, LiveStats
from gateway.config import ModelSpec, RouteSpec, Settings
from gateway.errors import ContextLengthExceeded, InvalidRequest, NoRouteSatisfies, NotFound
from gateway.features import Constraints, RequestFeatures, heuristic_difficulty
from gateway.pricing import Price, live_price, static_price
from policies import registry
from policies.base import Candidate, Decision, RankingPolicy, RoutingInput, as_ranking
from policies.router.model import QualityRouter

#: Whether this module (and with it the decide stage, see setup.py) runs compiled by mypyc.
COMPILED = not __file__.endswith(".py")
#: Llama-family tokenizers produce more tokens than tiktoken's cl100k for the same text.
LOCAL_TOKEN_MARGIN: Final = 1.15
DEFAULT_OUTPUT_TOKENS: Final = 256
MIN_OBSERVATIONS: Final = 20
#: Operating point of a route that configures none: recover half of the weak-strong quality gap (about 30%
#: of calls to the strongest model on the router's calibration data).
DEFAULT_QUALITY_TARGET: Final = 0.5
_PRIOR_TTFT_S = {True: 0.15, False: 0.6}  # is_local -> seconds
_PRIOR_TPOT_S = {True: 0.025, False: 0.03}
#: MT-Bench-like scores of well-known models, used when the config gives none.
KNOWN_QUALITY = {
    "llama-2-7b": 6.27,
    "llama-2-13b": 6.65,
    "llama-2-70b": 6.86,
    "gpt-3.5": 7.94,
    "gpt-4": 8.99,
    "mixtral": 8.3,
}


class QualityEstimator(Protocol):
    """Predicts, from the prompt alone, how likely the strong model is needed (0..1)."""

    def score(self, prompt: str, ids: list[int] | None = None) -> float:
        """P(the cheap model's answer is not good enough); ``ids``: the prompt's token ids, when known."""
        ...

    def threshold_for_strong_share(self, share: float) -> float:
        """The score above which a request goes to the strong model, for a target share."""
        ...

    def threshold_for_quality_target(self, target_pgr: float) -> float:
        """The score threshold that recovers ``target_pgr`` of the quality gap on calibration data."""
        ...


def base_quality(spec: ModelSpec) -> float:
    """The model's configured quality, else a known public figure, else a neutral 7."""
    if spec.quality is not None:
        return spec.quality
    key = spec.name.lower()
    for prefix, score in KNOWN_QUALITY.items():
        if key.startswith(prefix):
            return score
    return 7.0


def predicted_quality(q: float, q_top: float, difficulty: float, pivot: float) -> float:
    """Quality of a model on this prompt, on the 0-10 scale.

    The gap to the best candidate (``q_top - q``) scales with the prompt's difficulty relative to
    ``pivot`` (the learned router's calibrated threshold, or 0.5 for the heuristic): an easy prompt
    (difficulty near 0) costs a cheap model almost nothing, a prompt at the pivot costs its nominal gap,
    a very hard one up to twice that.
    """
    return scaled_quality(q, q_top, quality_factor(difficulty, pivot))


def scaled_quality(q: float, q_top: float, factor: float) -> float:
    """:func:`predicted_quality` with the prompt's :func:`quality_factor` computed once per request."""
    return max(q_top - (q_top - q) * factor, 0.0)


def quality_factor(difficulty: float, pivot: float) -> float:
    """How much of a model's nominal quality gap this prompt costs (see :func:`predicted_quality`)."""
    return min(max(difficulty / pivot, 0.0), 2.0) if pivot > 0 else 2.0


@dataclass(slots=True)
class Prepared:
    """A model's static facts, computed once at start-up, and references to its live state (the decide
    stage runs for every request: everything it can look up once is looked up here)."""

    spec: ModelSpec
    quality: float
    context_window: int
    supports_tools: bool
    price: Price
    gpu_priced: bool
    stats: LiveStats
    breaker: CircuitBreaker
    # derived from ``spec`` in __post_init__
    name: str = field(init=False)
    is_local: bool = field(init=False)
    prior_ttft_s: float = field(init=False)
    prior_tpot_s: float = field(init=False)
    capacity: int | None = field(init=False)
    tps_floor: float = field(init=False)
    token_margin: float = field(init=False)
    #: the throughput the last GPU-hour price was computed at, and that price (None before the first), reused
    #: while the throughput holds
    live_tps: float = field(default=0.0, init=False)
    live_price: Price | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        spec = self.spec
        self.name = spec.name
        self.is_local = spec.is_local
        self.prior_ttft_s = _PRIOR_TTFT_S[self.is_local]
        self.prior_tpot_s = _PRIOR_TPOT_S[self.is_local]
        self.capacity = spec.max_in_flight
        self.tps_floor = spec.tokens_per_second or 0.0
        self.token_margin = LOCAL_TOKEN_MARGIN if self.is_local else 1.0

    def price_now(self) -> Price:
        """The price for routing: static, or a local model's GPU time at its measured throughput (idle
        GPUs measure low, so never below its configured capacity)."""
        if not self.gpu_priced:
            return self.price
        measured = self.stats.tokens_per_second
        floor = self.tps_floor
        tps = measured.mean if measured.count and measured.mean > floor else floor
        price = self.live_price
        if price is not None and self.live_tps == tps:
            return price
        price = self.live_price = live_price(self.spec, tps or None)
        self.live_tps = tps
        return price


#: (request feature, what it needs in words, whether a model has it): the capability filters, in order.
_CAPABILITIES: tuple[tuple[str, str, Callable[[Prepared], bool]], ...] = (
    ("needs_tools", "tool calling", lambda p: p.supports_tools),
    ("needs_vision", "image input", lambda p: p.spec.supports_vision),
    ("needs_json", "JSON mode", lambda p: p.spec.supports_json_mode),
)


def _context_window(p: Prepared) -> int:
    return p.context_window


def _is_up(p: Prepared) -> bool:
    """Healthy, with its breaker letting calls through."""
    return p.stats.healthy and p.breaker.available()


def _expected_output(prep: Prepared, average: int) -> int:
    """A model's expected output length: its own average once it has enough observations, else ``average``."""
    own = prep.stats.output_tokens
    if own.count >= MIN_OBSERVATIONS:
        return max(int(own.mean), 1)
    return average


@dataclass(frozen=True, slots=True)
class _RouteFacts:
    """What the decide stage reads from a route on every request, looked up once at start-up."""

    spec: RouteSpec
    members: list[Prepared]
    weights: tuple[float, ...]  # quality, cost, latency (a tuple object: passed on as it is)
    limited: bool  # the route sets a cost, latency or quality limit
    threshold: float | None  # the learned router's operating point (None without a router)
    q_top: float  # the best member's configured quality
    #: every member has tools, vision and JSON mode (the capability filters cannot remove any)
    all_capable: bool
    #: ``prompt_tokens * max_margin + max_tokens <= min_window``: the request fits every member's window
    min_window: int
    max_margin: float
    policy: RankingPolicy  # the route's own policy (a request may name another)
    min_quality: float | None
    fallbacks: bool


def _predict(prep: Prepared, prompt_tokens: int, out_tokens: int, q_top: float, factor: float) -> Candidate:
    """A candidate's predictions for a request: cost, completion time (queueing included) and quality."""
    # Runs per candidate per request: live values are read once into locals.
    stats = prep.stats
    price = prep.price_now() if prep.gpu_priced else prep.price
    ttft = stats.ttft_s
    tpot = stats.tpot_s
    service = (ttft.mean if ttft.count else prep.prior_ttft_s) + (tpot.mean if tpot.count else prep.prior_tpot_s) * (
        out_tokens - 1 if out_tokens > 1 else 0
    )
    queue = stats.queue
    running = queue.running
    waiting = queue.waiting
    load = running + waiting
    capacity = prep.capacity
    wait = 0.0
    saturated = False
    if load and queue.scraped_at:
        wait = waiting * service / (running if running > 1.0 else 1.0)
        saturated = waiting > 0 or (capacity is not None and running >= capacity)
    in_flight = stats.in_flight
    if in_flight > load:
        load = float(in_flight)
    if capacity is not None and in_flight >= capacity:
        saturated = True
        wait = max(wait, (in_flight - capacity + 1) * service / capacity)
    quality = prep.quality
    return Candidate(
        prep.name,
        None,  # the exact Decimal: computed from price and tokens if ever asked for
        wait + service,
        scaled_quality(quality, q_top, factor),
        quality,
        prep.is_local,
        saturated,
        load,
        price.estimate(prompt_tokens, out_tokens),
        price,
        (prompt_tokens, out_tokens),
    )


class Plan:
    """The outcome of the decide stage (a plain class: see :class:`policies.base.RoutingInput`)."""

    __slots__ = ("decision", "route")

    def __init__(self, decision: Decision, route: str | None) -> None:
        self.decision: Final = decision
        self.route: Final = route


class Router:
    """Resolves names, predicts per candidate, applies constraints and runs the policy."""

    def __init__(
        self,
        settings: Settings,
        backends: dict[str, Backend],
        breakers: dict[str, CircuitBreaker],
        estimator: QualityEstimator | None = None,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.breakers = breakers
        self.estimator = estimator
        # The shipped router is called directly (compiled: a C call; through the Protocol, a generic one).
        self._router_model = estimator if isinstance(estimator, QualityRouter) else None
        self.routes: dict[str, RouteSpec] = settings.resolved_routes()
        self.models: dict[str, Prepared] = {}
        for spec in settings.models:
            price = static_price(spec)
            window = spec.context_window or price.max_input_tokens or 4096
            tools = spec.supports_tools if spec.supports_tools is not None else True
            gpu = spec.gpu_hour_usd is not None and price.source.startswith("gpu_hour")
            self.models[spec.name] = Prepared(
                spec, base_quality(spec), window, tools, price, gpu, backends[spec.name].stats, breakers[spec.name]
            )
        self.policies: dict[str, RankingPolicy] = {n: as_ranking(registry.get(n)()) for n in registry.names()}
        self._all = list(self.models.values())
        # Routes by name, except a route named like a model: an explicit model name wins.
        self._facts: dict[str, _RouteFacts] = {
            name: self._route_facts(r) for name, r in self.routes.items() if name not in self.models
        }

    def _route_facts(self, route: RouteSpec) -> _RouteFacts:
        members = [self.models[m] for m in route.models or []]
        return _RouteFacts(
            route,
            members,
            (route.weights.quality, route.weights.cost, route.weights.latency),
            route.max_cost_usd is not None or route.max_latency_ms is not None or route.min_quality is not None,
            self._threshold(route),
            max((p.quality for p in members), default=0.0),
            all(has(p) for _, _, has in _CAPABILITIES for p in members),
            min((p.context_window for p in members), default=0),
            max((p.token_margin for p in members), default=1.0),
            self.policy(route.policy),
            route.min_quality,
            bool(route.fallbacks),
        )

    def _threshold(self, route: RouteSpec) -> float | None:
        """The route's operating point for the learned router (default: ``DEFAULT_QUALITY_TARGET``)."""
        if self.estimator is None:
            return None
        if route.quality_target is not None:
            return self.estimator.threshold_for_quality_target(route.quality_target)
        if route.strong_share is not None:
            return self.estimator.threshold_for_strong_share(route.strong_share)
        return self.estimator.threshold_for_quality_target(DEFAULT_QUALITY_TARGET)

    def names(self) -> list[str]:
        """Every name a client may send: models, then routes."""
        return [*self.models, *self.routes]

    def policy(self, name: str) -> RankingPolicy:
        """The policy registered as ``name`` (400 naming it if unknown)."""
        policy = self.policies.get(name)
        if policy is None:
            raise InvalidRequest(
                f"Unknown routing policy '{name}' (known: {', '.join(sorted(self.policies))}).",
                param="x-gateway-policy",
                code="unknown_policy",
            )
        return policy

    # -- predictions ---------------------------------------------------------------------------------

    def candidate(
        self,
        name: str,
        feats: RequestFeatures,
        difficulty: float,
        q_top: float | None = None,
        pivot: float = 0.5,
        average_output: int | None = None,
    ) -> Candidate:
        """Predict cost, latency and quality of serving this request on model ``name`` (``average_output``:
        the across-models output average, when the caller computed it once for several candidates)."""
        prep = self.models[name]
        out_tokens = (feats.max_output_tokens or self._output_tokens(prep, average_output)) * feats.n
        top = prep.quality if q_top is None else q_top
        return _predict(prep, feats.prompt_tokens, out_tokens, top, quality_factor(difficulty, pivot))

    def expected_output_tokens(self, name: str, fallback: int | None = None) -> int:
        """Output length without max_tokens: the model's own average once it has enough observations,
        else the average across all models (``fallback`` when the caller computed it already), so an
        unobserved model is not judged on a different basis."""
        return self._output_tokens(self.models[name], fallback)

    def _output_tokens(self, prep: Prepared, fallback: int | None) -> int:
        return _expected_output(prep, self._average_output_tokens() if fallback is None else fallback)

    def _average_output_tokens(self) -> int:
        total = 0
        weighted = 0.0
        for p in self._all:
            seen = p.stats.output_tokens
            total += seen.count
            weighted += seen.mean * seen.count
        return max(int(weighted / total), 1) if total else DEFAULT_OUTPUT_TOKENS

    # -- the stage -----------------------------------------------------------------------------------

    def plan(self, requested: str, feats: RequestFeatures, constraints: Constraints) -> Plan:
        """Choose the ranking for a request naming ``requested`` (a route or a model)."""
        facts = self._facts.get(requested)
        if facts is None:
            if requested in self.models:
                return self._plan_model(requested, feats)
            raise NotFound(f"The model '{requested}' does not exist.", param="model")
        estimator = self.estimator
        threshold = facts.threshold
        model = self._router_model  # the estimator itself, when it is the shipped router
        if model is not None:
            difficulty = model.score(feats.prompt, feats.prompt_ids)
        elif estimator is not None:
            difficulty = estimator.score(feats.prompt, feats.prompt_ids)
        else:
            difficulty = heuristic_difficulty(feats.prompt)
        strong_needed = difficulty if estimator is not None else None
        pivot = threshold if threshold is not None else 0.5
        members = self._hard_filter(facts.members, feats, facts)
        q_top = facts.q_top if members is facts.members else max([p.quality for p in members])
        factor = quality_factor(difficulty, pivot)
        tokens = feats.prompt_tokens
        n = feats.n
        max_out = feats.max_output_tokens
        # Direct calls, not local aliases: compiled, an alias is a generic Python call, a direct one a C call.
        if max_out:
            out = max_out * n
            candidates = [_predict(p, tokens, out, q_top, factor) for p in members]
        else:
            average = self._average_output_tokens()
            candidates = [_predict(p, tokens, _expected_output(p, average) * n, q_top, factor) for p in members]
        c = constraints
        min_quality = c.min_quality
        if facts.limited or c.max_cost_usd is not None or c.max_latency_ms is not None or min_quality is not None:
            candidates = self._constrain(candidates, constraints, facts.spec)
        if min_quality is None:
            min_quality = facts.min_quality
        policy = self.policy(c.policy) if c.policy else facts.policy
        request = RoutingInput(
            feats.prompt,
            tokens,
            max_out or DEFAULT_OUTPUT_TOKENS,
            difficulty,
            strong_needed,
            threshold,
            facts.weights,
            min_quality,
        )
        decision = policy.rank(request, candidates)
        if not facts.fallbacks:
            del decision.ranking[1:]
        return Plan(decision, requested)

    def _plan_model(self, name: str, feats: RequestFeatures) -> Plan:
        difficulty = 0.5  # an explicit choice: no ranking depends on the prompt's difficulty
        first = self.candidate(name, feats, difficulty)
        fallbacks = [f for f in self.models[name].spec.fallbacks if f in self.models]
        try:
            fallbacks = [p.spec.name for p in self._hard_filter([self.models[f] for f in fallbacks], feats)]
        except (NoRouteSatisfies, ContextLengthExceeded):
            fallbacks = []
        ranking = [first, *(self.candidate(f, feats, difficulty) for f in fallbacks)]
        reason = f"model '{name}' requested explicitly" + (f"; fallbacks: {', '.join(fallbacks)}" if fallbacks else "")
        return Plan(Decision(ranking, reason, "explicit"), None)

    def _hard_filter(
        self, members: list[Prepared], feats: RequestFeatures, facts: _RouteFacts | None = None
    ) -> list[Prepared]:
        """Capabilities, context window and breakers; each with its own clear error. ``facts``: the route
        ``members`` come from, whose precomputed bounds skip the per-member checks that cannot fail; when
        nothing is filtered out, ``members`` itself is returned (not a copy)."""
        if not members:
            return members
        if (feats.needs_tools or feats.needs_vision or feats.needs_json) and not (facts and facts.all_capable):
            members = self._capable(members, feats)
        need_out = feats.max_output_tokens or 1
        tokens = feats.prompt_tokens
        if facts is not None and members is facts.members and tokens * facts.max_margin + need_out <= facts.min_window:
            fits = members
        else:
            fits = [p for p in members if tokens * p.token_margin + need_out <= p.context_window]
        if not fits:
            largest = max(members, key=_context_window)
            raise ContextLengthExceeded(
                f"The prompt (~{tokens} tokens) plus max_tokens ({need_out}) does not fit the "
                f"context window of any candidate (largest: {largest.context_window} tokens on "
                f"'{largest.spec.name}').",
                param="messages",
            )
        for p in fits:
            if not _is_up(p):
                up = [p for p in fits if _is_up(p)]
                return up or fits  # all down: try anyway rather than fail without trying
        return fits

    @staticmethod
    def _capable(members: list[Prepared], feats: RequestFeatures) -> list[Prepared]:
        for needed, label, has in _CAPABILITIES:
            if getattr(feats, needed):
                capable = [p for p in members if has(p)]
                if not capable:
                    names = ", ".join(p.spec.name for p in members)
                    raise NoRouteSatisfies(
                        f"No candidate model supports {label} (candidates: {names}).",
                        param="tools" if label == "tool calling" else None,
                    )
                members = capable
        return members

    def _constrain(self, cands: list[Candidate], c: Constraints, route: RouteSpec) -> list[Candidate]:
        max_cost = c.max_cost_usd if c.max_cost_usd is not None else route.max_cost_usd
        max_latency = c.max_latency_ms if c.max_latency_ms is not None else route.max_latency_ms
        min_quality = c.min_quality if c.min_quality is not None else route.min_quality
        if max_cost is not None:
            ok = [x for x in cands if x.cost_usd <= max_cost]
            if not ok:
                cheapest = min(cands, key=lambda x: x.cost_usd)
                raise NoRouteSatisfies(
                    f"No candidate satisfies max cost ${max_cost}: the cheapest, '{cheapest.name}', is "
                    f"predicted to cost ${cheapest.cost_usd:.8f}.",
                    param="x-gateway-max-cost-usd",
                )
            cands = ok
        if max_latency is not None:
            ok = [x for x in cands if x.latency_s * 1000 <= max_latency]
            if not ok:
                fastest = min(cands, key=lambda x: x.latency_s)
                raise NoRouteSatisfies(
                    f"No candidate satisfies max latency {max_latency:g} ms: the fastest, '{fastest.name}', "
                    f"is predicted to take {fastest.latency_s * 1000:.0f} ms.",
                    param="x-gateway-max-latency-ms",
                )
            cands = ok
        if min_quality is not None:
            ok = [x for x in cands if x.quality >= min_quality]
            if not ok:
                best = max(cands, key=lambda x: x.quality)
                raise NoRouteSatisfies(
                    f"No candidate satisfies min quality {min_quality:g}: the best, '{best.name}', is "
                    f"predicted at {best.quality:.2f} for this prompt.",
                    param="x-gateway-min-quality",
                )
            cands = ok
        return cands


def explain(plan: Plan) -> dict[str, Any]:
    """A JSON-able account of a decision: the ranking with each candidate's predictions."""
    d = plan.decision
    return {
        "route": plan.route,
        "policy": d.policy,
        "winner": d.winner.name,
        "reason": d.reason,
        "ranking": [
            {
                "model": c.name,
                "predicted_cost_usd": str(c.cost_usd),
                "predicted_latency_ms": round(c.latency_s * 1000, 1),
                "predicted_quality": round(c.quality, 3),
                "base_quality": c.base_quality,
                "saturated": c.saturated,
                "load": c.load,
                "score": d.scores.get(c.name),
            }
            for c in d.ranking
        ],
    }


def constraint_decimal(value: str | float | None, param: str) -> Decimal | None:
    """Parse a money constraint (header or body) into Decimal, 400 naming the param on garbage."""
    if value is None:
        return None
    try:
        out = Decimal(str(value))
    except ArithmeticError:
        raise InvalidRequest(f"Invalid value for '{param}': not a number.", param=param) from None
    if not out.is_finite() or out < 0:
        raise InvalidRequest(f"Invalid value for '{param}': must be a non-negative number.", param=param)
    return out
