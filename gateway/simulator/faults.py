"""Fault injection for the backend simulator.

Faults are configured at runtime with ``POST /_sim/faults`` (cleared with
``DELETE /_sim/faults``) or up front with ``create_simulator_app(..., faults=...)``.
They apply only to inference endpoints (``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``); ``/health``, ``/metrics``, ``/v1/models`` and ``/_sim/*`` keep working.

Modes and what a client sees on the wire:

``error_500``     HTTP 500 (or ``status``) with an OpenAI-style ``InternalServerError`` body.
``error_429``     HTTP 429 (or ``status``) ``RateLimitError`` body and a ``Retry-After`` header.
``error_400``     HTTP 400 (or another 4xx ``status``) ``BadRequestError`` body.
``hang``          Nothing is ever sent; the request ends when the client disconnects
                  (or after ``hold_s`` seconds, when given, with an abrupt close).
``reset``         The TCP connection is closed abruptly (RST) without any response bytes.
``invalid_json``  HTTP 200, ``application/json``, but the body is not JSON (for streaming
                  requests: one ``data:`` event that is not JSON, then ``[DONE]``).
``cut_stream``    Streaming: the role chunk and ``after_chunks`` content chunks are sent,
                  then the connection is closed abruptly (no final chunk, no ``[DONE]``).
                  Non-streaming: the headers and part of the JSON body, then the close.
``no_done``       Streaming: every chunk including ``finish_reason`` (and usage) is sent
                  but ``data: [DONE]`` never is; the connection stays open for ``hold_s``
                  seconds and then the response ends.  Non-streaming requests are normal.
``slow``          The request is served normally with every delay multiplied by ``factor``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar, cast, get_args

__all__ = [
    "FAULT_MODES",
    "FaultConfig",
    "FaultInjector",
    "FaultMode",
    "abort_connection",
    "error_body",
    "parse_fault",
]

FaultMode = Literal[
    "error_500", "error_429", "error_400", "hang", "reset", "invalid_json", "cut_stream", "no_done", "slow"
]
FAULT_MODES: tuple[str, ...] = get_args(FaultMode)
_N = TypeVar("_N", int, float)

_DEFAULT_STATUS = {"error_500": 500, "error_429": 429, "error_400": 400}
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}

RAW_SEND_KEY = "gateway.simulator.raw_send"
"""Scope key under which the simulator stores the server's own ``send`` callable."""


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """One configured fault.

    Attributes:
        mode: Which fault to inject (see the module docstring).
        count: How many requests it affects; ``None`` means until cleared.
        status: HTTP status for the ``error_*`` modes (defaults 500/429/400).
        retry_after: ``Retry-After`` seconds sent with ``error_429``.
        hold_s: How long ``no_done`` keeps the connection open (``hang``: optional limit).
        factor: Delay multiplier for ``slow``.
        after_chunks: Content chunks ``cut_stream`` sends before cutting.
        message: Error message for the ``error_*`` modes.
    """

    mode: FaultMode
    count: int | None = None
    status: int | None = None
    retry_after: float = 1.0
    hold_s: float | None = None
    factor: float = 10.0
    after_chunks: int = 3
    message: str | None = None

    @property
    def http_status(self) -> int:
        """The status code an ``error_*`` fault answers with."""
        return self.status if self.status is not None else _DEFAULT_STATUS.get(self.mode, 500)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable view of the fault (as ``GET /_sim/faults`` returns it)."""
        return {
            "mode": self.mode,
            "count": self.count,
            "status": self.status,
            "retry_after": self.retry_after,
            "hold_s": self.hold_s,
            "factor": self.factor,
            "after_chunks": self.after_chunks,
            "message": self.message,
        }


def parse_fault(payload: Any) -> FaultConfig:
    """Validate a ``POST /_sim/faults`` body (or a mode string) into a :class:`FaultConfig`.

    Raises:
        ValueError: on an unknown mode or a malformed field.
    """
    if isinstance(payload, FaultConfig):
        return payload
    if isinstance(payload, str):
        payload = {"mode": payload}
    if not isinstance(payload, Mapping):
        raise ValueError("fault must be a JSON object with a 'mode' field")
    mode = payload.get("mode")
    if mode not in FAULT_MODES:
        raise ValueError(f"unknown fault mode {mode!r}; expected one of {', '.join(FAULT_MODES)}")
    unknown = set(payload) - set(FaultConfig.__slots__)
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    count = _opt_number(payload, "count", int)
    status = _opt_number(payload, "status", int)
    if count is not None and count < 0:
        raise ValueError("'count' must be >= 0")
    if status is not None and not 100 <= status <= 599:
        raise ValueError("'status' must be an HTTP status code")
    message = payload.get("message")
    if message is not None and not isinstance(message, str):
        raise ValueError("'message' must be a string")
    return FaultConfig(
        mode=cast(FaultMode, mode),
        count=count,
        status=status,
        retry_after=_opt_number(payload, "retry_after", float) or 1.0,
        hold_s=_opt_number(payload, "hold_s", float),
        factor=_opt_number(payload, "factor", float) or 10.0,
        after_chunks=_opt_number(payload, "after_chunks", int) or 3,
        message=message,
    )


def _opt_number(payload: Mapping[str, Any], key: str, kind: type[_N]) -> _N | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise ValueError(f"{key!r} must be a {kind.__name__}")
    return kind(value)


class FaultInjector:
    """Holds the active fault and hands it out to requests, counting down ``count``."""

    def __init__(self, initial: FaultConfig | None = None) -> None:
        """Start with ``initial`` active (or no fault)."""
        self._active: FaultConfig | None = initial
        self.injected = 0

    @property
    def active(self) -> FaultConfig | None:
        """The fault currently configured, if any."""
        return self._active

    def set(self, fault: FaultConfig) -> None:
        """Replace the active fault."""
        self._active = fault if fault.count != 0 else None

    def clear(self) -> None:
        """Remove the active fault."""
        self._active = None

    def take(self) -> FaultConfig | None:
        """Return the fault for the next inference request, consuming one of its ``count``."""
        fault = self._active
        if fault is None:
            return None
        if fault.count is not None:
            remaining = fault.count - 1
            self._active = replace(fault, count=remaining) if remaining > 0 else None
        self.injected += 1
        return fault


def error_body(message: str, status: int, err_type: str | None = None) -> dict[str, Any]:
    """An OpenAI/vLLM-style error body: ``{"error": {message, type, param, code}}``."""
    if err_type is None:
        err_type = _ERROR_TYPES.get(status, "BadRequestError" if status < 500 else "InternalServerError")
    return {"error": {"message": message, "type": err_type, "param": None, "code": status}}


async def abort_connection(scope: Mapping[str, Any]) -> bool:
    """Close the client's TCP connection abruptly (RST, no response bytes).

    Works under uvicorn (whose ``send`` is a bound method of an object holding the
    asyncio transport; the simulator app stores that ``send`` in the scope).  Returns
    ``False`` when the transport cannot be reached, so the caller can fall back to
    raising an exception.
    """
    raw_send = scope.get(RAW_SEND_KEY)
    owner = getattr(raw_send, "__self__", None)
    transport = getattr(owner, "transport", None)
    # uvloop transports do not subclass asyncio.BaseTransport: duck-type instead
    if transport is None or not callable(getattr(transport, "get_extra_info", None)):
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:  # SO_LINGER 0 turns the close into a TCP RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError, TypeError):
            pass
    abort = getattr(transport, "abort", None)
    if callable(abort):
        abort()
    else:
        transport.close()
    await asyncio.sleep(0)  # let the server notice the connection loss
    return True
