"""Backends: one module per kind behind the :class:`backends.base.Backend` protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from backends.base import Backend, UpstreamResponse, UpstreamStream
from backends.breaker import BreakerState, CircuitBreaker
from backends.openai import OpenAICompatBackend
from backends.state import LiveStats
from backends.vllm import VLLMBackend
from backends.wire import UpstreamHTTP, as_upstream_http
from gateway.config import ModelSpec

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Backend",
    "BreakerState",
    "CircuitBreaker",
    "LiveStats",
    "UpstreamHTTP",
    "UpstreamResponse",
    "UpstreamStream",
    "build_backend",
]


def _openai(spec: ModelSpec, http: UpstreamHTTP, scrape_seconds: float) -> Backend:
    return OpenAICompatBackend(spec, http)


def _vllm(spec: ModelSpec, http: UpstreamHTTP, scrape_seconds: float) -> Backend:
    return VLLMBackend(spec, http, scrape_seconds)


def _litellm(spec: ModelSpec, http: UpstreamHTTP, scrape_seconds: float) -> Backend:
    from backends.litellm import LiteLLMBackend

    return LiteLLMBackend(spec)


_KINDS: dict[str, Callable[[ModelSpec, UpstreamHTTP, float], Backend]] = {
    "openai": _openai,
    "vllm": _vllm,
    "litellm": _litellm,
}


def build_backend(spec: ModelSpec, http: UpstreamHTTP | httpx.AsyncClient, *, scrape_seconds: float = 1.0) -> Backend:
    """Build the backend for ``spec`` from the kind registry, sending through ``http``."""
    return _KINDS[spec.backend](spec, as_upstream_http(http), scrape_seconds)
