"""Streamed tool-call deltas put in the order the Messages and Responses streams need: one call at a time.

The chat streaming format lets parallel calls' deltas interleave (both calls' ids and names, then their
arguments by turns: OpenAI-compatible servers may send that), while an Anthropic ``tool_use`` block and a
Responses ``function_call`` item are each started, filled and ended before the next one starts, as Anthropic and
OpenAI stream them. :class:`ToolCallOrder` turns the deltas into :class:`Step`\\ s for the renderers: the call
being streamed (the *open* call) gets its fragments as they arrive; another call's fragments are held until the
open call is complete (its arguments parse as JSON), or until the end, and then sent at once. One call after the
other, the common case, therefore streams as it arrives, exactly as before.

Text (the answer's content) that arrives while the open call is incomplete (:attr:`ToolCallOrder.busy`) must not
cut it: the renderers hold it until the call is complete, or the stream ends (:class:`HeldText`), and whitespace
alone after a call is dropped rather than made a text block of its own between two calls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway.frontdoors.chunks import ToolDelta

log = logging.getLogger("gateway.frontdoors.toolcalls")


@dataclass(slots=True, eq=False)
class Call:
    """One tool call as far as it arrived."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""  # everything that arrived
    sent: int = 0  # how much of ``arguments`` went out
    state: Literal["held", "open", "done"] = "held"

    @property
    def complete(self) -> bool:
        """Whether the arguments so far are a whole JSON value (an object, as functions take): no fragment can
        follow it but whitespace."""
        text = self.arguments.rstrip()
        if not text.endswith(("}", "]")):
            return False
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Step:
    """What a renderer does: ``start`` a call's block/item, send it ``arguments``, or ``stop`` it."""

    kind: Literal["start", "arguments", "stop"]
    call: Call
    arguments: str = ""


class ToolCallOrder:
    """One response's tool-call deltas as :class:`Step`\\ s, one call at a time (see the module's docstring)."""

    def __init__(self) -> None:
        self.calls: dict[int, Call] = {}  # by the chat delta's index, in order of arrival
        self.open: Call | None = None

    def feed(self, delta: ToolDelta) -> list[Step]:
        """The steps for one delta (none while it is held)."""
        call = self.calls.get(delta.index)
        if call is None:
            call = self.calls[delta.index] = Call(delta.index)
        call.id = call.id or delta.id
        call.name = call.name or delta.name
        if call.state == "done":  # past a complete JSON value only whitespace can come: nothing to add
            if delta.arguments.strip():
                log.warning("tool call %d: arguments after its block ended dropped: %.80r", call.index, delta.arguments)
            return []
        call.arguments += delta.arguments
        if call is self.open:
            out = self._send(call)
            if self._held() and call.complete:  # done: the calls held meanwhile go out now (parsed only then)
                out += self._stop(call) + self._release()
            return out
        if self.open is None:
            return self._release()
        if self.open.complete:  # the next call began: the open one ended
            return self._stop(self.open) + self._release()
        return []  # interleaved with the open call, which is still arriving: held

    @property
    def busy(self) -> bool:
        """Whether the open call's arguments are incomplete: nothing else may go out before more of them (text that
        arrives meanwhile is held), as they would be cut."""
        return self.open is not None and not self.open.complete

    def interrupt(self) -> list[Step]:
        """Stop the open call (something else, the answer's text, goes out next)."""
        return [] if self.open is None else self._stop(self.open)

    def finish(self) -> list[Step]:
        """The stream ended: stop the open call, then send every call still held, whole."""
        out = self.interrupt()
        for call in self._held():
            out += [Step("start", call), *self._send(call), *self._stop(call)]
        return out

    def _held(self) -> list[Call]:
        return [c for c in self.calls.values() if c.state == "held"]

    def _release(self) -> list[Step]:
        """Send the held calls in order: each complete one whole, then the first incomplete one stays open."""
        out: list[Step] = []
        held = self._held()
        for i, call in enumerate(held):
            out += [Step("start", call), *self._send(call)]
            call.state = "open"
            self.open = call
            if not call.complete or i == len(held) - 1:
                break  # streamed on from here (the last one too: it may still grow)
            out += self._stop(call)
        return out

    @staticmethod
    def _send(call: Call) -> list[Step]:
        fresh, call.sent = call.arguments[call.sent :], len(call.arguments)
        return [Step("arguments", call, fresh)] if fresh else []

    def _stop(self, call: Call) -> list[Step]:
        call.state = "done"
        if self.open is call:
            self.open = None
        return [Step("stop", call)]


@dataclass(slots=True)
class HeldText:
    """The answer's text held back while a tool call is being sent (see the module's docstring): ``pieces`` are
    whatever the renderer needs to send each piece of text later (its text first)."""

    pieces: list[tuple[Any, ...]] = field(default_factory=list)

    def hold(self, calls: ToolCallOrder, text: str, piece: tuple[Any, ...]) -> bool:
        """Hold ``piece`` (of ``text``) when a call is open and incomplete, or when, right after a call, the text held
        so far is whitespace only (a text block or another call may follow). Returns whether it was held; when not,
        the renderer sends :meth:`take` then ``piece``."""
        if calls.busy or (calls.open is not None and not (self.text() + text).strip()):
            self.pieces.append(piece)
            return True
        return False

    def text(self) -> str:
        return "".join(str(p[0]) for p in self.pieces)

    def release(self, steps: list[Step], calls: ToolCallOrder) -> list[tuple[Any, ...]]:
        """After a tool delta's ``steps``: the pieces to send now (the open call is complete), none while it is not;
        whitespace held is dropped when another call started."""
        if not self.pieces:
            return []
        if not self.text().strip():
            if any(step.kind == "start" for step in steps):
                self.pieces = []  # whitespace between two calls: no text block of its own
            return []
        return [] if calls.busy else self.take()

    def take(self) -> list[tuple[Any, ...]]:
        """Every piece held (and none any more)."""
        out, self.pieces = self.pieces, []
        return out

    def finish(self) -> list[tuple[Any, ...]]:
        """The stream ended (after the calls went out): the text held, unless it is whitespace only."""
        keep = bool(self.text().strip())
        out = self.take()
        return out if keep else []
