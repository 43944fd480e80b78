"""Interfaces of the stages other packages plug into, with do-nothing defaults.

The pipeline calls these at fixed points; ``create_app`` wires real implementations (virtual keys and
limits, the response cache, the ledger) or these defaults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.context import RequestContext

log = logging.getLogger("gateway.request")


class Admission(Protocol):
    """Stages 1 and 2: identify the caller (before the body is read), then enforce its rate limits and budget."""

    async def identify(self, ctx: RequestContext, *, fresh: bool = False) -> None:
        """Authenticate ``ctx.api_key`` once: set ``ctx.caller`` (and ``key_id``/``team``) or raise Unauthorized;
        ``fresh``: a request that will not be admitted (a read) asks the shared store whether the key was revoked."""
        ...

    async def admit(self, ctx: RequestContext) -> None:
        """For the caller :meth:`identify` set, reserve against its limits or raise RateLimited/BudgetExceeded."""
        ...

    async def settle(self, ctx: RequestContext) -> None:
        """After the request: release reservations and charge the actual cost and tokens."""
        ...

    async def authorize_admin(self, ctx: RequestContext, peer: str | None = None, endpoint: str = "") -> None:
        """Raise Unauthorized/Forbidden unless the caller holds the master key (when keys are on); ``peer``, the
        client's address, and ``endpoint`` say where a wrong key came from."""
        ...


@dataclass(slots=True)
class CachedAnswer:
    """A stored response body and how it was found."""

    body: dict[str, Any]
    status: str  # "hit" or "semantic-hit"
    score: float | None = None
    original_model: str | None = None
    reason: str | None = None  # why a semantic hit was served (similarity, threshold, verifier)


class ResponseCache(Protocol):
    """Stages 3 and 7: look up a stored answer before routing; store the answer after."""

    async def lookup(self, ctx: RequestContext) -> CachedAnswer | None:
        """Return a stored answer or None; set ``ctx.cache_status`` (miss/bypass). Never raises."""
        ...

    def store(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        """Schedule storing ``body`` (non-blocking). Never raises."""
        ...

    def wants_stream(self, ctx: RequestContext) -> bool:
        """Whether the relay should collect this streamed answer's chunks for :meth:`store_stream`."""
        ...

    def store_stream(self, ctx: RequestContext, chunks: list[dict[str, Any]]) -> None:
        """Schedule storing a streamed answer that completed normally (with ``[DONE]``)."""
        ...

    async def aclose(self) -> None:
        """Flush and close."""
        ...


class Recorder(Protocol):
    """Stage 7: the ledger. ``record`` must not block the response."""

    def record(self, ctx: RequestContext) -> None:
        """Queue one row for ``ctx`` (every request, whatever happened)."""
        ...

    async def aclose(self) -> None:
        """Flush every pending row."""
        ...


class QualityHook(Protocol):
    """The quality monitor's two calls from the pipeline (:class:`gateway.quality.monitor.QualityMonitor`)."""

    def wants(self, ctx: RequestContext) -> bool:
        """Whether to sample this answered request (cheap; never raises)."""
        ...

    def submit(self, ctx: RequestContext, answer: str) -> None:
        """Queue the sampled request, after its response completed (never blocks, never raises)."""
        ...


class OpenAdmission:
    """No keys: everyone is admitted, nothing is charged."""

    async def identify(self, ctx: RequestContext, *, fresh: bool = False) -> None:
        return None

    async def admit(self, ctx: RequestContext) -> None:
        return None

    async def settle(self, ctx: RequestContext) -> None:
        return None

    async def authorize_admin(self, ctx: RequestContext, peer: str | None = None, endpoint: str = "") -> None:
        return None


class NoCache:
    """The cache switched off: every request bypasses it."""

    async def lookup(self, ctx: RequestContext) -> CachedAnswer | None:
        ctx.cache_status = "bypass"
        return None

    def store(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        return None

    def wants_stream(self, ctx: RequestContext) -> bool:
        return False

    def store_stream(self, ctx: RequestContext, chunks: list[dict[str, Any]]) -> None:
        return None

    async def aclose(self) -> None:
        return None


class LogRecorder:
    """Writes each request's facts to the structured request log (no ledger configured)."""

    def record(self, ctx: RequestContext) -> None:
        log.info(
            "request",
            extra={"gateway": request_log_fields(ctx)},
        )

    async def aclose(self) -> None:
        return None


def request_log_fields(ctx: RequestContext) -> dict[str, Any]:
    """The facts of one request, for its structured log line (never includes keys or bodies)."""
    return {
        "request_id": ctx.request_id,
        "status": ctx.status_code,
        "route": ctx.route,
        "requested_model": ctx.requested_model,
        "model": ctx.chosen_model,
        "policy": ctx.policy,
        "reason": ctx.reason,
        "attempts": ctx.attempts,
        "cache": ctx.cache_status,
        "cache_score": ctx.cache_score,
        "cache_decision": ctx.extra.get("cache_decision"),
        "prompt_tokens": ctx.usage.prompt_tokens,
        "completion_tokens": ctx.usage.completion_tokens,
        "tokens_estimated": ctx.usage.estimated,
        "cost_usd": f"{ctx.cost_usd:f}",
        "ttft_ms": None if ctx.ttft_s is None else round(ctx.ttft_s * 1000, 2),
        "total_ms": None if ctx.total_s is None else round(ctx.total_s * 1000, 2),
        "error": ctx.error_type,
        "key_id": ctx.key_id,
    }
