"""Chat SSE chunks rendered as the Anthropic Messages stream.

``message_start`` (usage: the gateway's prompt token estimate), ``ping``; per content block
``content_block_start``, ``content_block_delta`` (``thinking_delta``, ``text_delta`` or ``input_json_delta``)...,
``content_block_stop``; then ``message_delta`` (stop reason, and the upstream's usage: the SDK takes its
``input_tokens`` over the estimate) and ``message_stop``. Parallel tool calls whose deltas interleave are sent
one block after the other (:mod:`gateway.frontdoors.toolcalls`). A failure mid-stream (an upstream's, or the key's
budget cutting the stream: ``billing_error``) ends it with an ``error`` event, which the SDK raises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.frontdoors.chunks import ToolDelta, deltas, sse
from gateway.frontdoors.messages import new_id, stop_reason, stream_error_type, thinking_block, usage_of
from gateway.frontdoors.toolcalls import Call, HeldText, Step, ToolCallOrder


class _Blocks:
    def __init__(self) -> None:
        self.count = 0
        self.open: str | None = None  # "text", or "tool" (which call: ``calls.open``)
        self.calls = ToolCallOrder()  # parallel calls' interleaved deltas, one block at a time
        self.held = HeldText()  # text that arrived while a call's arguments were incomplete
        self.unnamed: Call | None = None  # the open call, whose block waits for its name

    def start(self, key: str, block: dict[str, Any]) -> list[bytes]:
        out = self.stop()
        self.open = key
        out.append(
            sse("content_block_start", {"type": "content_block_start", "index": self.count, "content_block": block})
        )
        return out

    def delta(self, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": self.count, "delta": delta})

    def stop(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        index, self.count = self.count, self.count + 1
        return [sse("content_block_stop", {"type": "content_block_stop", "index": index})]

    def on_text(self, text: str) -> list[bytes]:
        if self.held.hold(self.calls, text, (text, "text")):
            return []
        return self._send([*self.held.take(), (text, "text")])

    def _send(self, pieces: list[tuple[Any, ...]]) -> list[bytes]:
        """Held pieces of text and of thinking, in order, each run of one kind as one delta."""
        out: list[bytes] = []
        for i, (text, kind) in enumerate(pieces):
            if i + 1 < len(pieces) and pieces[i + 1][1] == kind:
                pieces[i + 1] = (text + pieces[i + 1][0], kind)
            else:
                out += self._text(text) if kind == "text" else self._thinking(text)
        return out

    def _text(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open != "text":
            out = self.steps(self.calls.interrupt()) + self.start("text", {"type": "text", "text": ""})
        out.append(self.delta({"type": "text_delta", "text": text}))
        return out

    def on_thinking(self, text: str) -> list[bytes]:
        if self.calls.busy:  # as text is: the open call's arguments are incomplete, and a block would cut them
            self.held.pieces.append((text, "thinking"))
            return []
        return self._thinking(text)

    def _thinking(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open != "thinking":
            out = self.steps(self.calls.interrupt()) + self.start("thinking", thinking_block(""))
        out.append(self.delta({"type": "thinking_delta", "thinking": text}))
        return out

    def on_tool(self, d: ToolDelta) -> list[bytes]:
        steps = self.calls.feed(d)
        out = self.steps(steps)
        if self.unnamed is not None and self.unnamed.name:  # its name came (without arguments): the block starts
            out += self._start(self.unnamed)
        return out + self._send(self.held.release(steps, self.calls))

    def finish(self) -> list[bytes]:
        """End the open block, send the tool calls still held, then the text (and thinking) held."""
        out = self.steps(self.calls.finish())
        return out + self._send(self.held.finish()) + self.stop()

    def steps(self, steps: list[Step]) -> list[bytes]:
        out: list[bytes] = []
        for step in steps:
            call = step.call
            if step.kind == "start":
                if call.name:
                    out += self._start(call)
                else:  # Anthropic's tool_use block names its tool: started once the name (or more) comes
                    out += self.stop()
                    self.unnamed = call
            elif step.kind == "arguments":
                if self.unnamed is call:
                    out += self._start(call)
                out.append(self.delta({"type": "input_json_delta", "partial_json": step.arguments}))
            else:
                if self.unnamed is call:
                    out += self._start(call)
                out += self.stop()
        return out

    def _start(self, call: Call) -> list[bytes]:
        self.unnamed = None
        call.id = call.id or new_id("toolu")
        return self.start("tool", {"type": "tool_use", "id": call.id, "name": call.name or "", "input": {}})


async def render(
    frames: AsyncIterator[bytes],
    model: str,
    input_estimate: int,
    stop_sequences: list[str] | None,
    thinking: bool = False,
) -> AsyncIterator[bytes]:
    """The Messages stream for the pipeline's chat ``frames``; with ``thinking``, the upstream's reasoning as
    ``thinking`` blocks (``thinking_delta``)."""
    message: dict[str, Any] = {
        "id": new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_of({}, input_estimate),
    }
    yield sse("message_start", {"type": "message_start", "message": message})
    yield sse("ping", {"type": "ping"})
    blocks = _Blocks()
    finish: str | None = None
    matched: Any = None
    called = refused = False
    usage: dict[str, Any] = {}
    stream = deltas(frames)
    try:
        async for d in stream:
            if d.error is not None:
                for out in blocks.stop():
                    yield out
                yield _error(d.error)
                return
            if d.reasoning and thinking:
                for out in blocks.on_thinking(d.reasoning):
                    yield out
            if d.text or d.refusal:
                refused = refused or bool(d.refusal)
                for out in blocks.on_text(d.text + d.refusal):
                    yield out
            called = called or bool(d.tools)
            for tool in d.tools:
                for out in blocks.on_tool(tool):
                    yield out
            if d.finish_reason:
                finish, matched = d.finish_reason, d.stop_reason
            if d.usage:
                usage = d.usage
    finally:
        await stream.aclose()
    for out in blocks.finish():
        yield out
    reason, sequence = stop_reason(finish, matched, stop_sequences, called=called, refused=refused)
    counts = usage_of(usage, input_estimate)
    yield sse(
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": counts},
    )
    yield sse("message_stop", {"type": "message_stop"})


def _error(error: dict[str, Any]) -> bytes:
    """A failure after the stream started (the status line went out as 200): an upstream's, or the key's budget
    cutting the stream, in Anthropic's type (:func:`~gateway.frontdoors.messages.stream_error_type`)."""
    message = str(error.get("message") or "upstream error")
    return sse("error", {"type": "error", "error": {"type": stream_error_type(error), "message": message}})
