"""Per-request routing constraints and their one parser.

A request may constrain its routing with ``x-gateway-*`` headers or the body's ``gateway`` object; a header
wins over the body field of the same meaning. :class:`ConstraintFields` defines what each accepts, once: the
request models validate the body's object with it (and document it in the OpenAPI schema), and
:meth:`Constraints.parse` validates the headers with the same model, so both take the same values and a bad
one gets the same clear 400 naming where it came from (the header, or ``gateway.<field>``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from gateway.errors import InvalidRequest


class ConstraintFields(BaseModel):
    """The body's ``gateway`` object: per-request routing constraints (the same as the x-gateway-* headers)."""

    model_config = ConfigDict(extra="forbid")

    policy: StrictStr | None = None
    max_cost_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_latency_ms: float | None = Field(None, gt=0, allow_inf_nan=False)
    min_quality: float | None = Field(None, ge=0, le=10, allow_inf_nan=False)


#: field -> the header that sets it
HEADERS = {
    "policy": "x-gateway-policy",
    "max_cost_usd": "x-gateway-max-cost-usd",
    "max_latency_ms": "x-gateway-max-latency-ms",
    "min_quality": "x-gateway-min-quality",
}
#: the response cache's per-request lifetime (seconds; 0: do not store)
CACHE_TTL_HEADER = "x-gateway-cache-ttl"
#: every ``x-gateway-*`` request header the gateway reads
PARSED_HEADERS = (*HEADERS.values(), CACHE_TTL_HEADER)


@dataclass(slots=True)
class Constraints:
    """Per-request routing constraints: the policy to rank with, and limits on predicted cost, latency and
    quality (None: not constrained by the request; a route may still set its own)."""

    policy: str | None = None
    max_cost_usd: Decimal | None = None
    max_latency_ms: float | None = None
    min_quality: float | None = None
    cache_ttl_seconds: int | None = None  # x-gateway-cache-ttl (None: the cache's default)

    @classmethod
    def parse(cls, headers: Mapping[str, str], body: ConstraintFields | None = None) -> Constraints:
        """The constraints of a request from its (lower-cased) headers and its body's validated ``gateway``
        object; a header wins over the body, a blank header counts as absent.

        Raises:
            InvalidRequest: a header value its field does not take (``param`` names the header).
        """
        sent = {field: headers[h].strip() for field, h in HEADERS.items() if headers.get(h, "").strip()}
        try:
            from_headers = ConstraintFields.model_validate(sent)
        except ValidationError as exc:
            err = exc.errors()[0]
            header = HEADERS[str(err["loc"][0])]
            raise InvalidRequest(f"Invalid value for '{header}': {err['msg']}.", param=header) from None
        values = body.model_dump(exclude_none=True) if body is not None else {}
        values.update(from_headers.model_dump(exclude_unset=True))
        cost = values.get("max_cost_usd")
        return cls(
            policy=values.get("policy") or None,  # empty: the route's own policy
            max_cost_usd=None if cost is None else Decimal(repr(cost)),
            max_latency_ms=values.get("max_latency_ms"),
            min_quality=values.get("min_quality"),
            cache_ttl_seconds=parse_cache_ttl(headers),
        )


def parse_cache_ttl(headers: Mapping[str, str]) -> int | None:
    """Seconds from ``x-gateway-cache-ttl`` (a finite number >= 0, fractions truncated); None when absent.

    Raises:
        InvalidRequest: anything else (``inf``, ``nan``, ``1e400``, negative, not a number).
    """
    raw = headers.get(CACHE_TTL_HEADER, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(
            f"Invalid value for '{CACHE_TTL_HEADER}': expected a finite number of seconds >= 0, got {raw[:40]!r}.",
            param=CACHE_TTL_HEADER,
        )
    return int(value)
