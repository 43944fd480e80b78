"""The decide stage: resolve a route or model name to candidates, predict, filter, and rank.

For each candidate this module predicts the request's cost (exact, with the price the ledger charges:
:class:`gateway.pricing.ModelPrice`), completion time (from live per-backend moving averages and queue
depth) and answer quality (the model's score adjusted by the prompt's difficulty). Hard constraints
(capabilities, context window, open breakers, the request's cost/latency/quality limits) filter first, with a
clear error naming the failed constraint; the policy then only orders what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol, cast

from backends import Backend, CircuitBreaker, LiveStats
from gateway.config import ModelSpec, RouteSpec, Settings
from gateway.constraints import Constraints
from gateway.errors import ContextLengthExceeded, InvalidRequest, NoRouteSatisfies, NotFound, shown
from gateway.features import RequestFeatures, heuristic_difficulty
from gateway.pricing import ModelPrice
from policies import registry
from policies.base import Candidate, Decision, Policy, RoutingInput

#: Llama-family tokenizers produce more tokens than tiktoken's cl100k for the same text.
LOCAL_TOKEN_MARGIN = 1.15
DEFAULT_OUTPUT_TOKENS = 256
MIN_OBSERVATIONS = 20
#: Operating point of a route that configures none: recover half of the weak-strong quality gap (about 30%
#: of calls to the strongest model on the router's calibration data).
DEFAULT_QUALITY_TARGET = 0.5
#: Time to first token and per output token before any is measured, for local and hosted models.
PRIOR_TTFT_S = {True: 0.15, False: 0.6}
PRIOR_TPOT_S = {True: 0.025, False: 0.03}
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


class EmbeddingEstimator(QualityEstimator, Protocol):
    """An estimator that also reads the prompt's MiniLM embedding (an adapted router,
    :mod:`policies.router.adapt`); it says so with ``needs_embedding = True``."""

    def score(self, prompt: str, ids: list[int] | None = None, vector: Any = None) -> float:
        """As :meth:`QualityEstimator.score`; ``vector``: the prompt's unit embedding (None: a stand-in)."""
        ...


def reads_embedding(estimator: QualityEstimator | None) -> bool:
    """Whether ``estimator`` wants the prompt's embedding (its ``needs_embedding`` attribute, default no)."""
    return bool(getattr(estimator, "needs_embedding", False))


def embedding_vector(estimator: QualityEstimator | None) -> str:
    """Which prompt vector ``estimator`` reads (its ``vector`` attribute): ``minilm``, the semantic cache's
    sentence embedding (the default), or ``minilm-static`` (:mod:`cache.minilm_static`)."""
    return str(getattr(estimator, "vector", "minilm"))


def embedding_tokens(estimator: QualityEstimator | None) -> int:
    """How many word pieces of the prompt ``estimator``'s vector reads (its ``embed_max_tokens``; 128, the
    adaptation's default, for one that does not say)."""
    return int(getattr(estimator, "embed_max_tokens", 128))


def embedding_kind(estimator: QualityEstimator | None) -> tuple[str, int]:
    """The prompt vector ``estimator`` reads and of how many word pieces: what an encoder must compute for it."""
    return embedding_vector(estimator), embedding_tokens(estimator)


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
    factor = min(max(difficulty / pivot, 0.0), 2.0) if pivot > 0 else 2.0
    return max(q_top - (q_top - q) * factor, 0.0)


@dataclass(slots=True)
class ModelFacts:
    """A model's static facts, computed once at start-up, and references to its live state."""

    spec: ModelSpec
    quality: float
    context_window: int
    supports_tools: bool
    price: ModelPrice
    stats: LiveStats
    breaker: CircuitBreaker
    # from ``spec``, looked up once
    name: str = field(init=False)
    is_local: bool = field(init=False)
    prior_ttft_s: float = field(init=False)
    prior_tpot_s: float = field(init=False)
    token_margin: float = field(init=False)  # how many of its tokenizer's tokens one counted prompt token may be

    def __post_init__(self) -> None:
        self.name = self.spec.name
        self.is_local = self.spec.is_local
        self.prior_ttft_s = PRIOR_TTFT_S[self.is_local]
        self.prior_tpot_s = PRIOR_TPOT_S[self.is_local]
        self.token_margin = LOCAL_TOKEN_MARGIN if self.is_local else 1.0

    def is_up(self) -> bool:
        """Healthy, with its breaker letting calls through."""
        return self.stats.healthy and self.breaker.available()

    def expected_output(self, average: int) -> int:
        """Its expected output length: its own average once it has enough observations, else ``average``."""
        own = self.stats.output_tokens
        return max(int(own.mean), 1) if own.count >= MIN_OBSERVATIONS else average


#: (request feature, what it needs in words, whether a model has it): the capability filters, in order.
_CAPABILITIES: tuple[tuple[str, str, Callable[[ModelFacts], bool]], ...] = (
    ("needs_tools", "tool calling", lambda m: m.supports_tools),
    ("needs_vision", "image input", lambda m: m.spec.supports_vision),
    ("needs_json", "JSON mode", lambda m: m.spec.supports_json_mode),
    # litellm's backend calls acompletion, chat only; a hosted chat model behind ``openai`` answers 404 (a fallback)
    ("needs_completions", "text completions (/v1/completions)", lambda m: m.spec.backend != "litellm"),
)


#: The limits of an explicit model's request: none but the request's own.
_NO_ROUTE = RouteSpec()


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What the decide stage reads from a route, looked up once at start-up."""

    spec: RouteSpec
    members: list[ModelFacts]
    policy: Policy  # the route's own policy (a request may name another)
    threshold: float | None  # the learned router's operating point (None without a router)


@dataclass(slots=True)
class Plan:
    """The outcome of the decide stage: the decision, and the route it was made for (None: a model name)."""

    decision: Decision
    route: str | None
    #: The learned router's P(strong model needed) for the prompt, and the route's threshold on it (a cascade
    #: feeds the score to its answer check and compares against routing by it alone).
    strong_needed: float | None = None
    strong_threshold: float | None = None
    #: The route's ``quality_target`` (None: the default operating point).
    quality_target: float | None = None
    #: Whether a failed attempt may fall back to the next candidate (the route's ``fallbacks``).
    fallbacks: bool = True
    #: Why the ranking's first is not the route's choice with every model up (its choice is down), else None:
    #: the answer is served, never cached (``RequestContext.degraded``).
    degraded: str | None = None


@dataclass(slots=True)
class _Request:
    """What predicting a request's candidates needs, computed once per request."""

    prompt_tokens: int
    out_tokens: int | None  # max_tokens * n, or None: each model's expected output * n
    n: int
    average_output: int
    q_top: float
    difficulty: float
    pivot: float


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
        self.routes: dict[str, RouteSpec] = settings.resolved_routes()
        self.models: dict[str, ModelFacts] = {}
        for spec in settings.models:
            stats = backends[spec.name].stats
            price = ModelPrice(spec, stats.tokens_per_second)
            self.models[spec.name] = ModelFacts(
                spec,
                quality=base_quality(spec),
                context_window=spec.context_window or price.static.max_input_tokens or 4096,
                supports_tools=spec.supports_tools if spec.supports_tools is not None else True,
                price=price,
                stats=stats,
                breaker=breakers[spec.name],
            )
        self.policies: dict[str, Policy] = {name: registry.get(name)() for name in sorted(registry.names())}
        self._routes = self._route_facts(estimator)

    def _route_facts(self, estimator: QualityEstimator | None) -> dict[str, RouteFacts]:
        """Routes by name, except a route named like a model: an explicit model name wins."""
        return {
            name: RouteFacts(
                route,
                [self.models[m] for m in route.models or []],
                self.policy(route.policy),
                self._threshold(route, estimator),
            )
            for name, route in self.routes.items()
            if name not in self.models
        }

    def calibrated(self, estimator: QualityEstimator | None) -> dict[str, RouteFacts]:
        """Every route recalibrated on ``estimator``, for :meth:`set_estimator` (safe to run in a thread).

        Raises:
            ValueError: the estimator's calibration gives no threshold for a route's operating point.
        """
        return self._route_facts(estimator)

    def set_estimator(self, estimator: QualityEstimator | None, routes: dict[str, RouteFacts] | None = None) -> None:
        """Swap the learned router (a reload): the routes recalibrated on it (:meth:`calibrated`, computed here if
        not given) and the estimator are replaced together, between two requests' decisions (the decide stage
        does not await)."""
        self.estimator, self._routes = estimator, self._route_facts(estimator) if routes is None else routes

    @staticmethod
    def _threshold(route: RouteSpec, estimator: QualityEstimator | None) -> float | None:
        """The route's operating point for the learned router (default: ``DEFAULT_QUALITY_TARGET``)."""
        if estimator is None:
            return None
        if route.quality_target is not None:
            return estimator.threshold_for_quality_target(route.quality_target)
        if route.strong_share is not None:
            return estimator.threshold_for_strong_share(route.strong_share)
        return estimator.threshold_for_quality_target(DEFAULT_QUALITY_TARGET)

    def is_route(self, name: str) -> bool:
        """Whether ``name`` resolves to a route (whose decision reads the learned router)."""
        return name in self._routes

    def names(self) -> list[str]:
        """Every name a client may send: models, then routes."""
        return [*self.models, *self.routes]

    def policy(self, name: str) -> Policy:
        """The policy registered as ``name`` (400 naming it if unknown)."""
        policy = self.policies.get(name)
        if policy is None:
            raise InvalidRequest(
                f"Unknown routing policy '{shown(name)}' in 'x-gateway-policy' "
                f"(known: {', '.join(sorted(self.policies))}).",
                param="x-gateway-policy",
                code="unknown_policy",
            )
        return policy

    # -- predictions ---------------------------------------------------------------------------------

    def average_output_tokens(self) -> int:
        """The output length across all models, weighted by how many answers each has seen."""
        seen = [m.stats.output_tokens for m in self.models.values()]
        total = sum(s.count for s in seen)
        return max(int(sum(s.mean * s.count for s in seen) / total), 1) if total else DEFAULT_OUTPUT_TOKENS

    def _request(self, feats: RequestFeatures, q_top: float, difficulty: float, pivot: float) -> _Request:
        out = feats.max_output_tokens * feats.n if feats.max_output_tokens else None
        average = self.average_output_tokens() if out is None else 0
        return _Request(feats.billed_prompt_tokens, out, feats.n, average, q_top, difficulty, pivot)

    @staticmethod
    def _predict(model: ModelFacts, r: _Request) -> Candidate:
        """A candidate's predictions for a request: cost, completion time (queueing included) and quality."""
        out = r.out_tokens if r.out_tokens is not None else model.expected_output(r.average_output) * r.n
        stats = model.stats
        service = stats.ttft_s.get(model.prior_ttft_s) + stats.tpot_s.get(model.prior_tpot_s) * max(out - 1, 0)
        queue = stats.queue
        load = queue.running + queue.waiting
        capacity = model.spec.max_in_flight
        wait = 0.0
        saturated = False
        if load and queue.scraped_at:
            wait = queue.waiting * service / max(queue.running, 1.0)
            saturated = queue.waiting > 0 or (capacity is not None and queue.running >= capacity)
        in_flight = stats.in_flight
        load = max(load, float(in_flight))
        if capacity is not None and in_flight >= capacity:
            saturated = True
            wait = max(wait, (in_flight - capacity + 1) * service / capacity)
        return Candidate(
            model.name,
            cost_usd=model.price.now().cost(r.prompt_tokens, out),
            latency_s=wait + service,
            quality=predicted_quality(model.quality, r.q_top, r.difficulty, r.pivot),
            base_quality=model.quality,
            is_local=model.is_local,
            saturated=saturated,
            load=load,
        )

    def candidate(self, name: str, feats: RequestFeatures, difficulty: float = 0.5) -> Candidate:
        """Predict cost, latency and quality of serving this request on model ``name`` alone."""
        model = self.models[name]
        return self._predict(model, self._request(feats, model.quality, difficulty, 0.5))

    # -- the stage -----------------------------------------------------------------------------------

    def plan(self, requested: str, feats: RequestFeatures, constraints: Constraints, vector: Any = None) -> Plan:
        """Choose the ranking for a request naming ``requested`` (a route or a model); ``vector``: the prompt's
        embedding, for an adapted router (without it, it scores with its stand-in)."""
        route = self._routes.get(requested)
        if route is None:
            if requested in self.models:
                return self._plan_model(requested, feats, constraints)
            raise NotFound(f"The model '{requested}' does not exist.", param="model")
        estimator = self.estimator
        if estimator is not None:
            if reads_embedding(estimator):
                difficulty = cast(EmbeddingEstimator, estimator).score(feats.prompt, feats.prompt_ids, vector)
            else:
                difficulty = estimator.score(feats.prompt, feats.prompt_ids)
        else:
            difficulty = heuristic_difficulty(feats.prompt)
        fits = self._fits(route.members, feats)
        up = [m for m in fits if m.is_up()]
        strong = difficulty if estimator is not None else None
        decision = self._rank(route, up or fits, feats, constraints, difficulty, strong)
        spec = route.spec
        if not spec.fallbacks and decision.policy != "cascade":  # a cascade's ladder is not a fallback list
            del decision.ranking[1:]
        degraded = None
        if up and len(up) < len(fits):  # would the route have chosen a model that is down?
            try:
                first = self._rank(route, fits, feats, constraints, difficulty, strong).winner.name
            except NoRouteSatisfies:
                first = decision.winner.name
            if first != decision.winner.name:
                degraded = f"'{first}' is down"
        return Plan(decision, requested, strong, route.threshold, spec.quality_target, spec.fallbacks, degraded)

    def _rank(
        self,
        route: RouteFacts,
        members: list[ModelFacts],
        feats: RequestFeatures,
        constraints: Constraints,
        difficulty: float,
        strong: float | None,
    ) -> Decision:
        """The route's policy's ranking of ``members`` for this request (constraints applied: a 400 if none meets
        them)."""
        q_top = max((m.quality for m in members), default=0.0)
        pivot = route.threshold if route.threshold is not None else 0.5
        request = self._request(feats, q_top, difficulty, pivot)
        candidates = self._constrain([self._predict(m, request) for m in members], constraints, route.spec)
        spec = route.spec
        policy = self.policy(constraints.policy) if constraints.policy else route.policy
        return policy.rank(
            RoutingInput(
                prompt=feats.prompt,
                prompt_tokens=feats.prompt_tokens,
                expected_output_tokens=feats.max_output_tokens or DEFAULT_OUTPUT_TOKENS,
                difficulty=difficulty,
                strong_needed=strong,
                strong_threshold=route.threshold,
                weights=(spec.weights.quality, spec.weights.cost, spec.weights.latency),
                min_quality=_min_quality(constraints, spec),
            ),
            candidates,
        )

    def _plan_model(self, name: str, feats: RequestFeatures, constraints: Constraints) -> Plan:
        """An explicit model: it must serve chat/completions, have the capabilities the request needs and meet
        the request's constraints (each a 400 naming what failed); fallbacks that do not are left out."""
        difficulty = 0.5  # an explicit choice: no ranking depends on the prompt's difficulty
        model = self.models[name]
        if model.spec.mode != "chat":
            raise InvalidRequest(
                f"The model '{name}' is an {model.spec.mode} model; it does not serve chat or text completions.",
                param="model",
                code="model_not_chat",
            )
        self._capable([model], feats)
        if constraints.policy:
            self.policy(constraints.policy)  # an unknown name is a 400 here too, though nothing is ranked
        self._constrain([self.candidate(name, feats, difficulty)], constraints, _NO_ROUTE)
        fallbacks = [self.models[f] for f in model.spec.fallbacks if f in self.models]
        try:
            usable = [m.name for m in self._hard_filter([m for m in fallbacks if m.spec.mode == "chat"], feats)]
            if usable:
                cands = [self.candidate(m, feats, difficulty) for m in usable]
                usable = [c.name for c in self._constrain(cands, constraints, _NO_ROUTE)]
        except (NoRouteSatisfies, ContextLengthExceeded):
            usable = []
        order, reason = self._named_first(name, usable, f"model '{name}' requested explicitly")
        ranking = [self.candidate(m, feats, difficulty) for m in order]
        return Plan(Decision(ranking, reason, "explicit"), None)

    def plan_embeddings(self, name: str, feats: RequestFeatures, constraints: Constraints) -> Plan:
        """An embedding model asked for by name (it serves embeddings: the caller checked), then its fallbacks
        that meet the request's constraints (the model must: a 400 naming the one it fails, as for chat)."""
        if constraints.policy:
            self.policy(constraints.policy)  # an unknown name is a 400 here too, though nothing is ranked
        self._constrain([self.candidate(name, feats)], constraints, _NO_ROUTE)
        fallbacks = [f for f in self.models[name].spec.fallbacks if f in self.models]
        try:
            cands = [self.candidate(f, feats) for f in fallbacks]
            fallbacks = [c.name for c in self._constrain(cands, constraints, _NO_ROUTE)] if cands else []
        except NoRouteSatisfies:
            fallbacks = []
        order, reason = self._named_first(name, fallbacks, f"embedding model '{name}' requested")
        return Plan(Decision([self.candidate(m, feats) for m in order], reason, "explicit"), None)

    def _named_first(self, name: str, fallbacks: list[str], reason: str) -> tuple[list[str], str]:
        """The order to try a model asked for by name and its ``fallbacks``, and the decision's reason: the model
        first, unless it is down (breaker open, or unhealthy) while a fallback is up: the request need not wait on
        it."""
        if fallbacks:
            reason += f"; fallbacks: {', '.join(fallbacks)}"
        if not self.models[name].is_up() and any(self.models[f].is_up() for f in fallbacks):
            return [*fallbacks, name], reason + f" (first: '{name}' is down)"
        return [name, *fallbacks], reason

    def _hard_filter(self, members: list[ModelFacts], feats: RequestFeatures) -> list[ModelFacts]:
        """Capabilities, context window and breakers; each with its own clear error."""
        fits = self._fits(members, feats)
        return [m for m in fits if m.is_up()] or fits  # all down: try anyway rather than fail without trying

    def _fits(self, members: list[ModelFacts], feats: RequestFeatures) -> list[ModelFacts]:
        """The members with the request's capabilities whose context window holds it; each with its own clear
        error when none does."""
        if not members:
            return members
        members = self._capable(members, feats)
        need_out = feats.max_output_tokens or 1
        tokens = feats.prompt_tokens
        fits = [m for m in members if tokens * m.token_margin + need_out <= m.context_window]
        if not fits:
            largest = max(members, key=lambda m: m.context_window)
            raise ContextLengthExceeded(
                f"The prompt (~{tokens} tokens) plus max_tokens ({need_out}) does not fit the "
                f"context window of any candidate (largest: {largest.context_window} tokens on "
                f"'{largest.name}').",
                param="prompt" if feats.needs_completions else "messages",
            )
        return fits

    @staticmethod
    def _capable(members: list[ModelFacts], feats: RequestFeatures) -> list[ModelFacts]:
        """The members with every capability the request needs, or a 400 naming the one none has."""
        for needed, label, has in _CAPABILITIES:
            if getattr(feats, needed):
                capable = [m for m in members if has(m)]
                if not capable:
                    names = ", ".join(m.name for m in members)
                    raise NoRouteSatisfies(
                        f"No candidate model supports {label} (candidates: {names}).",
                        param="tools" if label == "tool calling" else None,
                    )
                members = capable
        return members

    @staticmethod
    def _constrain(cands: list[Candidate], c: Constraints, route: RouteSpec) -> list[Candidate]:
        """The candidates within the request's limits (else the route's), or a 400 naming the one that failed."""
        max_cost = cost_limit(c, route)
        max_latency = _tighter(min, c.max_latency_ms, route.max_latency_ms)
        min_quality = _min_quality(c, route)
        if max_cost is not None:
            ok = [x for x in cands if x.cost_usd <= max_cost]
            if not ok:
                cheapest = min(cands, key=lambda x: x.cost_usd)
                raise NoRouteSatisfies(
                    f"No candidate satisfies max cost ${max_cost} ('x-gateway-max-cost-usd'): the cheapest, "
                    f"'{cheapest.name}', is predicted to cost ${cheapest.cost_usd:.8f}.",
                    param="x-gateway-max-cost-usd",
                )
            cands = ok
        if max_latency is not None:
            ok = [x for x in cands if x.latency_s * 1000 <= max_latency]
            if not ok:
                fastest = min(cands, key=lambda x: x.latency_s)
                raise NoRouteSatisfies(
                    f"No candidate satisfies max latency {max_latency:g} ms ('x-gateway-max-latency-ms'): the "
                    f"fastest, '{fastest.name}', is predicted to take {fastest.latency_s * 1000:.0f} ms.",
                    param="x-gateway-max-latency-ms",
                )
            cands = ok
        if min_quality is not None:
            ok = [x for x in cands if x.quality >= min_quality]
            if not ok:
                best = max(cands, key=lambda x: x.quality)
                raise NoRouteSatisfies(
                    f"No candidate satisfies min quality {min_quality:g} ('x-gateway-min-quality'): the best, "
                    f"'{best.name}', is predicted at {best.quality:.2f} for this prompt.",
                    param="x-gateway-min-quality",
                )
            cands = ok
        return cands


def _min_quality(c: Constraints, route: RouteSpec) -> float | None:
    """The request's quality floor and its route's: the higher."""
    if c.min_quality is None or route.min_quality is None:
        return route.min_quality if c.min_quality is None else c.min_quality
    return max(c.min_quality, route.min_quality)


#: A limit: a client's (float) or a route's (a cost is a Decimal in the config).
Limit = float | Decimal


def cost_limit(c: Constraints, route: RouteSpec | None) -> Decimal | None:
    """A request's cost limit: the client's, tightened by its route's (never loosened); None: no limit. Each
    candidate is held to it here, and a cascade's rungs together (:mod:`gateway.cascade`)."""
    own = route.max_cost_usd if route is not None else None
    if c.max_cost_usd is None:
        return own
    return c.max_cost_usd if own is None else min(c.max_cost_usd, own)


def _tighter(pick: Callable[[Limit, Limit], Limit], request: Limit | None, route: Limit | None) -> Limit | None:
    """A client's limit and its route's together: the client may tighten what the operator set, never loosen it
    (its ``max_cost_usd`` of 100 on a route capped at 0.001 bought the dear model)."""
    if request is None:
        return route
    return request if route is None else pick(request, route)


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
