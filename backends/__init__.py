"""Backends: one module per kind behind the :class:`backends.base.Backend` protocol."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from backends.base import Backend, UpstreamResponse, UpstreamStream
from backends.breaker import BreakerState, CircuitBreaker
from backends.http import build_session
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
    "build_session",
]


def _openai(spec: ModelSpec, session: aiohttp.ClientSession, scrape_seconds: float) -> Backend:
    return OpenAICompatBackend(spec, session)


def _vllm(spec: ModelSpec, session: aiohttp.ClientSession, scrape_seconds: float) -> Backend:
    return VLLMBackend(spec, session, scrape_seconds)


def _litellm(spec: ModelSpec, session: aiohttp.ClientSession, scrape_seconds: float) -> Backend:
    from backends.litellm import LiteLLMBackend

    return LiteLLMBackend(spec)


_KINDS: dict[str, Callable[[ModelSpec, aiohttp.ClientSession, float], Backend]] = {
    "openai": _openai,
    "vllm": _vllm,
    "litellm": _litellm,
}


def build_backend(spec: ModelSpec, session: aiohttp.ClientSession, *, scrape_seconds: float = 1.0) -> Backend:
    """Build the backend for ``spec`` from the kind registry; HTTP kinds send through ``session``
    (:func:`build_session`)."""
    return _KINDS[spec.backend](spec, session, scrape_seconds)
