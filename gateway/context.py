"""The state of one request as it moves through the pipeline; the ledger row is read from it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from gateway.constraints import Constraints

Endpoint = Literal["chat", "completions", "embeddings"]

ENDPOINT_PATHS: dict[Endpoint, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


#: The most tokens one usage figure of an upstream's counts as (the ledger's INTEGER columns): an upstream's absurd
#: figure (2**64) otherwise broke the request log line and the span's export, and its cost the ledger row's money.
MAX_USAGE_TOKENS = 2**31 - 1


def usage_tokens(value: Any) -> int:
    """A token count an upstream reported (``usage.prompt_tokens``...), as counted: a number, not negative, at most
    :data:`MAX_USAGE_TOKENS`; anything else (a string, null, NaN) is 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return 0
    return int(min(value, MAX_USAGE_TOKENS))


@dataclass(slots=True)
class Usage:
    """Token counts; ``estimated`` when the upstream reported none and we counted them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class AttemptCost:
    """One paid call whose answer the client never sees: a cascade's escalated answer or its judge's verdict, or
    a call that timed out after it reached the upstream (estimated tokens)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    outcome: str  # "escalated", "verifier" or "timed_out"

    def to_json(self) -> dict[str, object]:
        """The attempt as the ledger's ``cascade_attempts`` column stores it."""
        return {
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": f"{self.cost_usd:f}",
            "outcome": self.outcome,
        }


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, as admission identified it once, before the body was read."""

    key_id: str  # a virtual key's id, or "master"
    name: str = ""
    team: str | None = None
    budget_usd: Decimal | None = None
    rpm: int | None = None
    tpm: int | None = None
    spent_usd: Decimal = Decimal(0)  # the ledger's spend of the key when its record was read


#: ``cache_status`` values of an answer served from the cache: no upstream read or wrote its tokens.
CACHE_HITS = ("hit", "semantic-hit")


@dataclass(slots=True)
class RequestContext:
    """Everything known about one request, filled in stage by stage."""

    request_id: str
    endpoint: Endpoint
    body: dict[str, Any]
    requested_model: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased request headers
    started: float = field(default_factory=time.perf_counter)
    started_wall: float = field(default_factory=time.time)
    stream: bool = False
    #: the client's API when a front door translated it to ``endpoint`` ("responses", "messages")
    api: str | None = None
    client_wants_usage: bool = False
    # admission
    api_key: str | None = None
    caller: Caller | None = None  # set by Admission.identify (None: keys are off, or not identified yet)
    key_id: str | None = None
    spend_cap_usd: Decimal | None = None  # the most this request may cost (its budget reservation), if any
    team: str | None = None
    user: str | None = None
    # routing
    route: str | None = None
    policy: str | None = None
    reason: str = ""
    constraints: Constraints = field(default_factory=Constraints)
    prompt_tokens_estimate: int = 0
    chosen_model: str | None = None
    attempts: list[str] = field(default_factory=list)
    #: the model whose upstream call is in flight (a client leaving now is charged for it), else None
    calling: str | None = None
    #: whether that call streams (None: as the client asked; a cascade asks its checked rungs for whole answers)
    calling_stream: bool | None = None
    predicted_cost: Decimal | None = None
    # outcome
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal = Decimal(0)
    baseline_cost_usd: Decimal = Decimal(0)
    saved_usd: Decimal = Decimal(0)
    cache_status: str = "bypass"
    cache_score: float | None = None
    #: what else the cache key must hold: for a model asked by name, the upstream model and server behind it
    #: (swapping the model behind a name starts a new cache; see ``cache.keys``)
    cache_scope: str | None = None
    #: why the answer is not the one the plan wanted (a fallback answered after the first choice failed, or a
    #: cascade kept an answer its check rejected): such an answer is served, never cached, so it cannot outlive
    #: the outage that produced it
    degraded: str | None = None
    #: the routing prompt's MiniLM vector once computed (by the semantic cache or for the adapted router)
    prompt_vector: Any = None
    ttft_s: float | None = None
    total_s: float | None = None
    status_code: int = 200
    error_type: str | None = None
    error_message: str | None = None
    finish_reason: str | None = None
    # cascade routes: "accepted" / "escalated", why, and the attempts paid before the final answer
    cascade: str | None = None
    cascade_reason: str = ""
    cascade_attempts: list[AttemptCost] = field(default_factory=list)
    routed_cost_usd: Decimal | None = None  # what routing by the prompt alone would have cost
    extra: dict[str, Any] = field(default_factory=dict)
    trace: Any = None  # the request's spans when OpenTelemetry is on (gateway.telemetry)

    @property
    def cache_hit(self) -> bool:
        """Whether the answer came from the cache (:data:`CACHE_HITS`)."""
        return self.cache_status in CACHE_HITS

    @property
    def path(self) -> str:
        """The upstream path for this endpoint (relative to a ``/v1`` base URL)."""
        return ENDPOINT_PATHS[self.endpoint]

    def elapsed(self) -> float:
        """Seconds since the request arrived."""
        return time.perf_counter() - self.started
