"""The gateway's one error hierarchy.

Every failure a client can see is a :class:`GatewayError`. Each subclass knows its HTTP status and its
OpenAI error ``type``; one exception handler (``gateway.app``) renders them as
``{"error": {"message", "type", "param", "code"}}``. Backends translate transport errors (aiohttp) into
:class:`UpstreamError` subclasses at their boundary, so nothing above them sees aiohttp exceptions.
"""

from __future__ import annotations

from typing import Any, ClassVar


def shown(value: str, limit: int = 64) -> str:
    """A client's value as an error message quotes it: cut (a 100 KB id or name is not echoed back whole)."""
    return value if len(value) <= limit else value[:limit] + "..."


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    @property
    def status(self) -> int:
        """The HTTP status this error is rendered with."""
        return self.status_code

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    """The request is malformed or a field is invalid (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class NoRouteSatisfies(InvalidRequest):
    """No candidate model satisfies the request's constraints or capabilities (400)."""

    default_code = "no_candidate_satisfies_constraints"


class ContextLengthExceeded(InvalidRequest):
    """The prompt does not fit any candidate's context window (400)."""

    default_code = "context_length_exceeded"


class Unauthorized(GatewayError):
    """Missing, unknown or revoked API key (401)."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(GatewayError):
    """The key is valid but not allowed to do this (403)."""

    status_code = 403
    error_type = "permission_error"


class NotFound(GatewayError):
    """Unknown model, route or resource (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class PayloadTooLarge(GatewayError):
    """The request body exceeds the configured limit (413)."""

    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class HeadersTooLarge(GatewayError):
    """The request's headers and URL exceed ``server.max_header_bytes`` (431; the connection is closed)."""

    status_code = 431
    error_type = "invalid_request_error"
    default_code = "request_header_fields_too_large"

    def __init__(self, size: int, limit: int) -> None:
        message = f"The request's headers and URL are {size} bytes, more than the limit of {limit} bytes."
        super().__init__(message, headers={"connection": "close"})


class UnsupportedEncoding(GatewayError):
    """The request body is compressed (``Content-Encoding``), which the gateway does not decode (415)."""

    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_content_encoding"


class BudgetExceeded(GatewayError):
    """The key's or team's budget is spent (402)."""

    status_code = 402
    error_type = "insufficient_quota"
    default_code = "budget_exceeded"


class RateLimited(GatewayError):
    """Requests or tokens per minute exceeded (429, with Retry-After)."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """A backend failed. ``retryable`` tells the pipeline whether to try the next candidate.

    ``message`` (what the client sees) names the model, never its address; ``detail`` (the transport error,
    the upstream's raw answer) is for the gateway's log only. ``reached``: the request may have reached the
    backend (False only when the connection itself failed), in which case it is never sent there again."""

    status_code = 502
    error_type = "upstream_error"
    retryable: ClassVar[bool] = True

    def __init__(
        self, message: str, *, backend: str = "", detail: str = "", reached: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.backend = backend
        self.detail = detail
        self.reached = reached


class UpstreamUnavailable(UpstreamError):
    """Connection refused, reset, or the upstream answered with garbage (502)."""

    default_code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time (504)."""

    status_code = 504
    error_type = "timeout"
    default_code = "upstream_timeout"


#: Upstream statuses that are the gateway's configuration failing, not the client's request: the provider refused
#: the gateway's credentials (401, 403), or does not serve the configured model (404).
GATEWAY_FAULT_STATUSES = frozenset({401, 403, 404})


class UpstreamRejected(UpstreamError):
    """The upstream answered with an HTTP error: a 4xx is passed through (its OpenAI fields, scrubbed), a 5xx
    becomes 502 (503 and 504 kept), so a failing upstream never looks like a gateway bug.

    4xx other than 408/429 are the client's fault and are not retried on another backend, except
    :data:`GATEWAY_FAULT_STATUSES`: a 502, retried, and counted against the backend like a 5xx (relayed as they
    were, a client read a provider's 401 as its own key refused, and the backend kept its share of traffic).
    """

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        error_type: str | None = None,
        backend: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(message, backend=backend, **kwargs)
        self.upstream_status = upstream_status
        self._error_type = error_type

    @property
    def status(self) -> int:
        if self.upstream_status >= 500:
            return self.upstream_status if self.upstream_status in (503, 504) else 502
        if self.upstream_status in GATEWAY_FAULT_STATUSES:
            return 502
        return self.upstream_status

    @property
    def is_retryable(self) -> bool:
        """5xx, 408, 429 and the gateway's own faults may succeed elsewhere; other 4xx would fail the same
        everywhere."""
        status = self.upstream_status
        return status >= 500 or status in (408, 429) or status in GATEWAY_FAULT_STATUSES

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        if self._error_type:
            body["error"]["type"] = self._error_type
        return body


def is_retryable(exc: UpstreamError) -> bool:
    """Whether a failed attempt may be retried on the next candidate."""
    if isinstance(exc, UpstreamRejected):
        return exc.is_retryable
    return exc.retryable


class AllCandidatesFailed(UpstreamError):
    """Every candidate in the ranking failed; carries the last failure's status."""

    def __init__(self, last: UpstreamError, attempts: list[str]) -> None:
        tried = ", ".join(attempts)
        super().__init__(
            f"{last.message} (tried: {tried})",
            backend=last.backend,
            code=last.code,
            param=last.param,
            headers=last.headers,
        )
        self.last = last
        self.attempts = attempts

    @property
    def status(self) -> int:
        return self.last.status

    def to_body(self) -> dict[str, Any]:
        body = self.last.to_body()
        body["error"]["message"] = self.message
        return body


class ConfigError(Exception):
    """The configuration file is invalid. The message is one line naming file, key path and problem."""
