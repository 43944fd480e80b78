"""Chat SSE chunks rendered as the Responses API's typed stream events.

Order, as OpenAI sends them: ``response.created``, ``response.in_progress``; per output item
``response.output_item.added``, then for the model's reasoning (where the upstream reports it, as vLLM's reasoning
parsers do) ``response.content_part.added``, ``response.reasoning_text.delta``..., ``response.reasoning_text.done``,
``response.content_part.done``; for a message ``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done`` (for a refusal ``response.refusal.delta``...,
``response.refusal.done``), ``response.content_part.done``, or for a function call
``response.function_call_arguments.delta``..., ``response.function_call_arguments.done``; then
``response.output_item.done`` (a message cut short by ``max_output_tokens`` is ``incomplete``); last
``response.completed`` (or ``response.incomplete``) carrying the whole response with ``usage``. Parallel tool
calls whose deltas interleave are sent one item after the other (:mod:`gateway.frontdoors.toolcalls`). An upstream
failure mid-stream ends it with ``error`` and ``response.failed``. When the request asked for them, the text events
carry the upstream's log probabilities (:mod:`gateway.frontdoors.responses_settings`).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gateway.frontdoors import responses_settings as settings
from gateway.frontdoors.chunks import Delta, ToolDelta, deltas, sse
from gateway.frontdoors.responses import (
    finish,
    function_item,
    item_status,
    message_item,
    new_id,
    output_item_id,
    reasoning_item,
    reasoning_part,
    refusal_part,
    text_part,
    usage_of,
    whole_arguments,
)
from gateway.frontdoors.toolcalls import HeldText, Step, ToolCallOrder

#: Called with the finished response object before the last event goes out (to store it).
OnDone = Callable[[dict[str, Any]], Awaitable[None]]


class _Renderer:
    def __init__(self, response: dict[str, Any], logprobs: bool = False) -> None:
        self.response = response
        self.logprobs = logprobs  # asked for: the text events and parts carry them
        self.token_logprobs: list[dict[str, Any]] = []  # the open message's, in the part's format
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.text = ""
        self.kind = "output_text"  # the open message's part: text, or a refusal
        self.reasoning = ""  # the open reasoning item's text
        self.calls = ToolCallOrder()  # parallel calls' interleaved deltas, one item at a time
        self.held = HeldText()  # text that arrived while a call's arguments were incomplete

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(kind, payload)

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.response)

    def start(self) -> list[bytes]:
        return [
            self.event("response.created", response=self.snapshot()),
            self.event("response.in_progress", response=self.snapshot()),
        ]

    def _open_item(self, item: dict[str, Any]) -> list[bytes]:
        out = self.close()
        item["id"] = output_item_id(str(self.response["id"]), item, len(self.output))
        self.open = item
        self.output.append(item)
        out.append(self.event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item)))
        return out

    def on_text(self, text: str, kind: str = "output_text", logprobs: Any = None) -> list[bytes]:
        """A piece of the answer's text (``kind`` ``refusal``: of the model's refusal), with its tokens' log
        probabilities (chat's ``logprobs.content``) when the request asked for them; held while a tool call's
        arguments are incomplete (:class:`HeldText`)."""
        if self.held.hold(self.calls, text, (text, kind, logprobs)):
            return []
        return self._texts([*self.held.take(), (text, kind, logprobs)])

    def _texts(self, pieces: list[tuple[Any, ...]]) -> list[bytes]:
        out: list[bytes] = []
        for text, kind, logprobs in pieces:
            out += self._reasoning(text) if kind == "reasoning" else self._text(text, kind, logprobs)
        return out

    def _text(self, text: str, kind: str, logprobs: Any) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["type"] != "message" or self.kind != kind:
            item = message_item("", status="in_progress")
            item["content"] = []
            out = self._steps(self.calls.interrupt()) + self._open_item(item)
            self.text = ""
            self.kind = kind
            self.token_logprobs = []
            out.append(self.event("response.content_part.added", **self._where(), part=_part(kind, "")))
        self.text += text
        if kind == "refusal":
            out.append(self.event("response.refusal.delta", **self._where(), delta=text))
        else:
            pieces = settings.output_logprobs(logprobs) if self.logprobs else []
            self.token_logprobs += pieces
            lps = settings.event_logprobs(pieces)
            out.append(self.event("response.output_text.delta", **self._where(), delta=text, logprobs=lps))
        return out

    def on_reasoning(self, text: str) -> list[bytes]:
        """A piece of the model's reasoning (a ``reasoning`` item's ``reasoning_text``, as vLLM streams it); held, as
        text is, while a tool call's arguments are incomplete."""
        if self.calls.busy:
            self.held.pieces.append((text, "reasoning", None))
            return []
        return self._reasoning(text)

    def _reasoning(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["type"] != "reasoning":
            item = reasoning_item("", status="in_progress")
            item["content"] = []
            out = self._steps(self.calls.interrupt()) + self._open_item(item)
            self.reasoning = ""
            out.append(self.event("response.content_part.added", **self._where(), part=reasoning_part("")))
        self.reasoning += text
        out.append(self.event("response.reasoning_text.delta", **self._where(), delta=text))
        return out

    def on_tool(self, d: ToolDelta) -> list[bytes]:
        """A piece of a tool call (parallel calls' pieces may interleave: :class:`ToolCallOrder` orders them)."""
        steps = self.calls.feed(d)
        return self._steps(steps) + self._texts(self.held.release(steps, self.calls))

    def finish(self, status: str) -> list[bytes]:
        """End the last items: the open one, then the tool calls still held, then the text held (``status``: a
        cut-short answer's)."""
        out = self.close(status) if self.open is not None and self.open["type"] == "message" else []
        out += self._steps(self.calls.finish(), status)
        return out + self._texts(self.held.finish()) + self.close(status)

    def _steps(self, steps: list[Step], status: str = "completed") -> list[bytes]:
        out: list[bytes] = []
        for step in steps:
            call = step.call
            if step.kind == "start":
                call.id = call.id or new_id("call")
                item = function_item(call.id, call.name or "", "")
                item["status"] = "in_progress"
                out += self._open_item(item)
            elif step.kind == "arguments":
                assert self.open is not None
                self.open["arguments"] += step.arguments
                out.append(
                    self.event(
                        "response.function_call_arguments.delta",
                        item_id=self.open["id"],
                        output_index=len(self.output) - 1,
                        delta=step.arguments,
                    )
                )
            else:
                if self.open is not None and call.name:  # a name that came after the call's first piece
                    self.open["name"] = call.name
                out += self.close(status)
        return out

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.output) - 1, "content_index": 0}

    def close(self, status: str = "completed") -> list[bytes]:
        """End the open item (its ``.done`` events); a message ends with ``status``."""
        item, self.open = self.open, None
        if item is None:
            return []
        index = self.output.index(item)
        out: list[bytes] = []
        if item["type"] == "message":
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            part = _part(self.kind, self.text)
            if self.kind == "refusal":
                out.append(self.event("response.refusal.done", **where, refusal=self.text))
            else:
                part["logprobs"] = self.token_logprobs
                lps = settings.event_logprobs(self.token_logprobs)
                out.append(self.event("response.output_text.done", **where, text=self.text, logprobs=lps))
            out.append(self.event("response.content_part.done", **where, part=part))
            item["content"] = [part]
        elif item["type"] == "reasoning":
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            part = reasoning_part(self.reasoning)
            out.append(self.event("response.reasoning_text.done", **where, text=self.reasoning))
            out.append(self.event("response.content_part.done", **where, part=part))
            item["content"] = [part]
        else:
            item["arguments"] = whole_arguments(item["arguments"])
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        item["status"] = status if item["type"] == "message" or status == "incomplete" else "completed"
        out.append(self.event("response.output_item.done", output_index=index, item=dict(item)))
        return out


def _part(kind: str, text: str) -> dict[str, Any]:
    return refusal_part(text) if kind == "refusal" else text_part(text)


async def render(
    frames: AsyncIterator[bytes], response: dict[str, Any], on_done: OnDone, *, logprobs: bool = False
) -> AsyncIterator[bytes]:
    """The Responses API stream for the pipeline's chat ``frames``; ``response`` is the skeleton
    (:func:`gateway.frontdoors.responses.skeleton`) that streaming announces and then completes; ``logprobs``: the
    request asked for the text's log probabilities."""
    r = _Renderer(response, logprobs)
    for out in r.start():
        yield out
    finish_reason: str | None = None
    usage: dict[str, Any] = {}
    stream = deltas(frames)
    try:
        async for d in stream:
            if d.error is not None:
                for out in r.close("incomplete"):  # cut short: never "completed"
                    yield out
                for out in _failed(r, d.error):
                    yield out
                return
            for out in _apply(r, d):
                yield out
            finish_reason = d.finish_reason or finish_reason
            if d.usage:
                usage = d.usage
    finally:
        await stream.aclose()
    for out in r.finish(item_status(finish_reason)):
        yield out
    response["output"] = r.output
    response["usage"] = usage_of(usage)
    finish(response, finish_reason)
    await on_done(response)
    kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
    yield r.event(kind, response=r.snapshot())


def _apply(r: _Renderer, d: Delta) -> list[bytes]:
    if d.model:
        r.response["model"] = d.model
    settings.served_tier(r.response, d.service_tier)
    out: list[bytes] = []
    if d.reasoning:
        out += r.on_reasoning(d.reasoning)
    if d.text:
        out += r.on_text(d.text, logprobs=d.logprobs)
    if d.refusal:
        out += r.on_text(d.refusal, "refusal")
    for tool in d.tools:
        out += r.on_tool(tool)
    return out


def _failed(r: _Renderer, error: dict[str, Any]) -> list[bytes]:
    message = str(error.get("message") or "upstream error")
    code = error.get("code") or error.get("type") or "server_error"
    r.response["status"] = "failed"
    r.response["output"] = r.output
    r.response["error"] = {"code": str(code), "message": message}
    return [
        r.event("error", code=str(code), message=message, param=error.get("param")),
        r.event("response.failed", response=r.snapshot()),
    ]
