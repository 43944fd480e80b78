"""Backends: one module per kind behind the :class:`backends.base.Backend` protocol."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from backends.base import Backend, UpstreamResponse, UpstreamStream
from backends.breaker import BreakerState, CircuitBreaker
from backends.openai import OpenAICompatBackend
from backends.state import LiveStats
from backends.vllm import VLLMBackend
from gateway.config import ModelSpec

__all__ = [
    "Backend",
    "BreakerState",
    "CircuitBreaker",
    "LiveStats",
    "UpstreamResponse",
    "UpstreamStream",
    "build_backend",
]


Transport = httpx.AsyncBaseTransport | None


def _openai(spec: ModelSpec, client: httpx.AsyncClient, transport: Transport, scrape_seconds: float) -> Backend:
    return OpenAICompatBackend(spec, client, transport)


def _vllm(spec: ModelSpec, client: httpx.AsyncClient, transport: Transport, scrape_seconds: float) -> Backend:
    return VLLMBackend(spec, client, transport, scrape_seconds)


def _litellm(spec: ModelSpec, client: httpx.AsyncClient, transport: Transport, scrape_seconds: float) -> Backend:
    from backends.litellm import LiteLLMBackend

    return LiteLLMBackend(spec)


_KINDS: dict[str, Callable[[ModelSpec, httpx.AsyncClient, Transport, float], Backend]] = {
    "openai": _openai,
    "vllm": _vllm,
    "litellm": _litellm,
}


def build_backend(
    spec: ModelSpec,
    client: httpx.AsyncClient,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    scrape_seconds: float = 1.0,
) -> Backend:
    """Build the backend for ``spec`` from the kind registry (``transport``: the client's own)."""
    return _KINDS[spec.backend](spec, client, transport, scrape_seconds)
