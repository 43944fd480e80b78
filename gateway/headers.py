"""The ``x-gateway-*`` response headers: what the gateway decided for a request, for the client to read."""

from __future__ import annotations

from decimal import Decimal

from gateway.context import RequestContext


def header_safe(text: str) -> str:
    """``text`` as one line of ASCII, at most 512 characters: a header value whatever a reason holds."""
    return text.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")[:512]


def gateway_headers(ctx: RequestContext, cost: Decimal) -> dict[str, str]:
    """The request id, the model and policy that answered and why, ``cost`` (estimated on a stream), the cache's
    outcome and score, the route, and a cascade's outcome."""
    headers = {
        "x-request-id": ctx.request_id,
        "x-gateway-model": ctx.chosen_model or "",
        "x-gateway-policy": ctx.policy or "",
        "x-gateway-reason": header_safe(ctx.reason),
        "x-gateway-cost-usd": f"{cost:f}",
        "x-gateway-cache": ctx.cache_status,
    }
    if ctx.stream:
        headers["x-gateway-cost-estimated"] = "true"
    if ctx.route:
        headers["x-gateway-route"] = ctx.route
    if ctx.cache_score is not None:
        headers["x-gateway-cache-score"] = f"{ctx.cache_score:.4f}"
    if ctx.cascade is not None:
        headers["x-gateway-cascade"] = ctx.cascade
        headers["x-gateway-cascade-reason"] = header_safe(ctx.cascade_reason)
        headers["x-gateway-cascade-attempts"] = ",".join(ctx.attempts)
    return headers
