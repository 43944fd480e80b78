"""Hosted providers that do not speak the OpenAI API (Anthropic, Bedrock, Vertex...) via ``litellm``.

``litellm`` is imported when the first such backend is built (it takes seconds to import), never at
gateway start-up otherwise. Its responses are OpenAI-shaped; they are turned into plain dicts and SSE
payloads so the pipeline treats this backend like any other, and it counts its requests in flight
(``stats.in_flight``) as the HTTP backends do.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from backends.base import UpstreamResponse
from backends.state import LiveStats
from gateway.config import ModelSpec
from gateway.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable


def _translate(exc: BaseException, backend: str) -> UpstreamError:
    """Map litellm's (OpenAI-SDK-derived) exceptions to the gateway's error tree."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout(f"upstream '{backend}' timed out", backend=backend)
    if isinstance(exc, openai.APIStatusError):
        return UpstreamRejected(
            getattr(exc, "message", None) or str(exc), upstream_status=exc.status_code, backend=backend
        )
    return UpstreamUnavailable(f"upstream '{backend}' failed: {exc}", backend=backend)


def _dump(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    dumped: dict[str, Any] = obj.model_dump(exclude_none=False)
    return dumped


class _LiteLLMStream:
    def __init__(self, iterator: Any, backend: str, stats: LiveStats) -> None:
        self._iterator = iterator
        self._backend = backend
        self._stats: LiveStats | None = stats  # its in-flight count drops (once) when the stream is closed
        self.replica = "litellm"

    async def events(self) -> AsyncIterator[bytes]:
        errors = _error_types()
        try:
            async for chunk in self._iterator:
                yield orjson.dumps(_dump(chunk))
        except errors as exc:
            raise _translate(exc, self._backend) from None
        yield b"[DONE]"

    async def aclose(self) -> None:
        stats, self._stats = self._stats, None
        if stats is None:
            return
        try:
            close = getattr(self._iterator, "aclose", None)
            if close is not None:
                await close()
        finally:
            stats.in_flight -= 1


def _error_types() -> tuple[type[BaseException], ...]:
    import openai

    return (openai.OpenAIError,)


class LiteLLMBackend:
    """A model reached through ``litellm.acompletion`` (``backend: litellm``)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self.stats = LiveStats()
        # litellm fetches its price map from the network at import unless told to use the bundled copy.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        self._litellm = importlib.import_module("litellm")

    def _kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(body)
        kwargs["model"] = self.spec.upstream_name
        if self.spec.base_url:
            kwargs["api_base"] = self.spec.base_url
        key = self.spec.api_key()
        if key:
            kwargs["api_key"] = key
        kwargs["timeout"] = self.spec.timeouts.total
        return kwargs

    async def complete(self, path: str, body: dict[str, Any]) -> UpstreamResponse:
        if path != "/chat/completions":
            raise UpstreamRejected(
                f"model '{self.name}' (litellm) serves chat completions only",
                upstream_status=400,
                backend=self.name,
            )
        self.stats.in_flight += 1
        try:
            result = await self._litellm.acompletion(**self._kwargs(body))
        except _error_types() as exc:
            raise _translate(exc, self.name) from None
        finally:
            self.stats.in_flight -= 1
        return UpstreamResponse(status=200, body=_dump(result), replica="litellm")

    async def open_stream(self, path: str, body: dict[str, Any]) -> _LiteLLMStream:
        if path != "/chat/completions":
            raise UpstreamRejected(
                f"model '{self.name}' (litellm) serves chat completions only",
                upstream_status=400,
                backend=self.name,
            )
        kwargs = self._kwargs(body)
        kwargs["stream"] = True
        self.stats.in_flight += 1  # until the stream is closed, or now if none is returned
        try:
            try:
                iterator = await self._litellm.acompletion(**kwargs)
            except _error_types() as exc:
                raise _translate(exc, self.name) from None
        except BaseException:
            self.stats.in_flight -= 1
            raise
        return _LiteLLMStream(iterator, self.name, self.stats)

    async def check_health(self) -> bool:
        # Hosted providers have no cheap, uniform health endpoint; the breaker tracks real failures.
        return self.stats.healthy

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
