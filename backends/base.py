"""The one small interface every backend kind implements, and the values it exchanges.

A backend takes an OpenAI-style request body (a dict, ``model`` already rewritten to the upstream's
name) and returns either a parsed JSON response or an open stream of SSE ``data:`` payloads. Transport
failures are raised as :class:`gateway.errors.UpstreamError` subclasses; nothing above this package sees
an aiohttp or provider exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from backends.state import LiveStats


@dataclass(slots=True)
class UpstreamResponse:
    """A complete (non-streaming) upstream answer."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    replica: str = ""


class UpstreamStream(Protocol):
    """An open upstream SSE stream whose status was 200.

    ``events()`` yields each event's ``data`` payload as bytes (``b"[DONE]"`` included, if sent);
    ``aclose()`` releases the connection and must be called (the pipeline does so in ``finally``).
    """

    replica: str

    def events(self) -> AsyncIterator[bytes]:
        """The SSE data payloads, in order, as they arrive."""
        ...

    async def aclose(self) -> None:
        """Release the connection; cancels the upstream request if still running."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A model served somewhere: vLLM, an OpenAI-compatible API, or a provider through litellm."""

    name: str
    stats: LiveStats

    async def complete(self, path: str, body: dict[str, Any]) -> UpstreamResponse:
        """POST ``body`` to ``path`` (``/chat/completions``, ``/completions``, ``/embeddings``)."""
        ...

    async def open_stream(self, path: str, body: dict[str, Any]) -> UpstreamStream:
        """Start a streaming request; raise before returning if the upstream refused it."""
        ...

    async def check_health(self) -> bool:
        """Ask the upstream whether it is up (cheap; used by ``/ready`` and the breaker's probes)."""
        ...

    async def start(self) -> None:
        """Start background work (metrics scrape); called once in the app's lifespan."""
        ...

    async def aclose(self) -> None:
        """Stop background work."""
        ...
