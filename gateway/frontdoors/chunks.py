"""Reading the pipeline's chat SSE frames back as deltas, for the front doors' stream renderers."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from cache.assemble import CallIndexes
from gateway.context import usage_tokens


@dataclass(slots=True)
class ToolDelta:
    """A piece of one tool call: its id and name arrive first, its arguments in fragments."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(slots=True)
class Delta:
    """What one chat chunk adds (the first choice only: these APIs have one output per request)."""

    text: str = ""
    reasoning: str = ""  # the model's reasoning (vLLM's ``reasoning_content``, or ``reasoning``)
    refusal: str = ""  # the model declining (structured outputs): chat's ``delta.refusal``
    tools: list[ToolDelta] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: Any = None  # vLLM's matched stop string (or token id)
    usage: dict[str, Any] | None = None
    model: str | None = None
    logprobs: Any = None  # the text's token log probabilities, when asked for: chat's ``logprobs.content``
    service_tier: str | None = None  # the tier the upstream says served the answer
    error: dict[str, Any] | None = None  # the pipeline's in-stream error event


def usage_detail(usage: dict[str, Any], group: str, name: str) -> int:
    """One of a chat ``usage``'s details, e.g. ``prompt_tokens_details.cached_tokens`` (0 when it says none)."""
    details = usage.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    return usage_tokens(value) if isinstance(value, int) else 0


def reasoning_of(message: dict[str, Any]) -> str:
    """The reasoning a chat message or delta carries: vLLM's ``reasoning_content`` (its reasoning parsers), or the
    ``reasoning`` of newer vLLM and other OpenAI-compatible servers; OpenAI's own API sends none."""
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def sse(event: str, payload: dict[str, Any]) -> bytes:
    """One named SSE event (``event:`` line and JSON ``data:``), as both APIs send them."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def deltas(frames: AsyncIterator[bytes]) -> AsyncGenerator[Delta, None]:
    """The chat frames (``data: {...}\\n\\n``, one event each) as deltas, to the end of the stream.

    The frames iterator is closed when this generator is, so the pipeline's relay (and its ledger row)
    finishes however the client's stream ends.
    """
    calls = CallIndexes()
    try:
        async for frame in frames:
            payload = frame[6:].strip() if frame.startswith(b"data: ") else b""
            if not payload:
                continue
            if payload == b"[DONE]":
                continue  # the relay ends right after it: reading on lets it finish (not a disconnect)
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                yield _delta(chunk, calls)
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()


def _delta(chunk: dict[str, Any], calls: CallIndexes) -> Delta:
    if "error" in chunk and "choices" not in chunk:
        error = chunk["error"]
        return Delta(error=error if isinstance(error, dict) else {"message": str(error)})
    out = Delta(model=chunk.get("model"))
    tier = chunk.get("service_tier")
    if isinstance(tier, str) and tier:
        out.service_tier = tier
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        out.usage = usage
    for choice in chunk.get("choices") or []:
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str):
            out.text = delta["content"]
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                out.logprobs = logprobs.get("content")
        out.reasoning = reasoning_of(delta)
        if isinstance(delta.get("refusal"), str):
            out.refusal = delta["refusal"]
        for call in delta.get("tool_calls") or []:
            fn = call.get("function") or {}
            out.tools.append(ToolDelta(calls.of(call), call.get("id"), fn.get("name"), fn.get("arguments") or ""))
        if choice.get("finish_reason"):
            out.finish_reason = choice["finish_reason"]
            out.stop_reason = choice.get("stop_reason")
    return out
