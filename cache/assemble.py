"""A streamed answer's chunks assembled into the body a non-streaming request would have received.

Per choice index: string deltas concatenated (``content``, ``refusal``, ``reasoning_content`` ...), tool
call deltas merged by their index (``arguments`` concatenated, ``id``/``type``/``name`` taken when they
appear), the legacy ``function_call`` merged the same way, the finish reason, and logprobs concatenated.
Text completions concatenate ``text`` and the logprobs lists. The result is stored only if every choice
finished (a truncated stream never becomes a cached answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_LOGPROB_LISTS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


class CallIndexes:
    """Each tool call's place in a stream: the upstream's ``index``, or, where it sends none (Gemini's
    OpenAI-compatible API, some proxies), the next place for each new call ``id`` (a fragment without an id
    continues the last call). Read as 0, a second call's fragments were appended to the first call's.

    A call that starts (an ``id`` and a ``name``) on an index another call with a different id already holds (an
    upstream bug seen in the wild) is a new call, at the next free place, and the index's later fragments are
    its own: they were merged into one call (``{"a":1}{"b":2}``). A different id without a name continues the call
    (an upstream that repeats a changing id on every fragment)."""

    __slots__ = ("_by_id", "_by_index", "_ids", "_last", "_moved", "_next")

    def __init__(self) -> None:
        self._by_id: dict[str, int] = {}  # call id -> its place
        self._by_index: dict[int, int] = {}  # the upstream's index -> the place of the call it carries now
        self._ids: dict[int, str] = {}  # place -> its call's id
        self._moved: set[int] = set()  # the places given to an index other than its own
        self._last = 0
        self._next = 0  # past every place taken

    def of(self, call: dict[str, Any]) -> int:
        index, call_id = call.get("index"), call.get("id")
        call_id = call_id if isinstance(call_id, str) and call_id else None
        if isinstance(index, int) and not isinstance(index, bool):
            place = self._by_index.get(index)
            if place is None and index not in self._moved:
                place = index
            elif place is None or (call_id is not None and self._ids.get(place, call_id) != call_id and _named(call)):
                place = self._new()  # a second call on the index, or an index whose place such a call got
                self._moved.add(place)
            self._by_index[index] = place
            self._next = max(self._next, place + 1)
        elif call_id is not None:
            place = self._by_id[call_id] if call_id in self._by_id else self._new()
        else:
            return self._last
        if call_id is not None:
            self._by_id.setdefault(call_id, place)
            self._ids.setdefault(place, call_id)
        self._last = place
        return place

    def _new(self) -> int:
        place, self._next = self._next, self._next + 1
        return place


def _named(call: dict[str, Any]) -> bool:
    fn = call.get("function")
    return isinstance(fn, dict) and isinstance(fn.get("name"), str) and bool(fn["name"])


@dataclass(slots=True)
class _Choice:
    index: int
    role: str | None = None
    strings: dict[str, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    function_call: dict[str, Any] | None = None
    finish_reason: str | None = None
    stop_reason: Any = None  # vLLM's matched stop string or token (the Messages API's ``stop_sequence``)
    logprobs: dict[str, list[Any]] | None = None
    calls: CallIndexes = field(default_factory=CallIndexes)

    def add_logprobs(self, lp: Any) -> None:
        if not isinstance(lp, dict):
            return
        if self.logprobs is None:
            self.logprobs = {}
        for k, v in lp.items():
            if isinstance(v, list):
                self.logprobs.setdefault(k, []).extend(v)


def _merge_call(into: dict[str, Any], delta: dict[str, Any]) -> None:
    for k in ("id", "type"):
        if delta.get(k):
            into[k] = delta[k]
    fn = delta.get("function")
    if isinstance(fn, dict):
        target = into.setdefault("function", {"name": "", "arguments": ""})
        if isinstance(fn.get("name"), str):
            target["name"] += fn["name"]  # sent whole in the call's first delta, but pieces add up too
        if isinstance(fn.get("arguments"), str):
            target["arguments"] += fn["arguments"]


def _add_chat_delta(c: _Choice, delta: dict[str, Any]) -> None:
    for k, v in delta.items():
        if k == "role":
            if isinstance(v, str) and v:
                c.role = v
        elif k == "tool_calls" and isinstance(v, list):
            for call in v:
                if not isinstance(call, dict):
                    continue
                slot = c.tool_calls.setdefault(c.calls.of(call), {"id": None, "type": "function"})
                _merge_call(slot, call)
        elif k == "function_call" and isinstance(v, dict):
            if c.function_call is None:
                c.function_call = {"name": "", "arguments": ""}
            if v.get("name"):
                c.function_call["name"] = v["name"]
            if isinstance(v.get("arguments"), str):
                c.function_call["arguments"] += v["arguments"]
        elif isinstance(v, str):
            c.strings.setdefault(k, []).append(v)


def _chat_choice(c: _Choice) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": c.role or "assistant"}
    for k, parts in c.strings.items():
        msg[k] = "".join(parts)
    msg.setdefault("content", None)
    if c.tool_calls:
        msg["tool_calls"] = [
            {
                "id": call.get("id"),
                "type": call.get("type") or "function",
                "function": call.get("function") or {"name": "", "arguments": ""},
            }
            for _, call in sorted(c.tool_calls.items())
        ]
    if c.function_call is not None:
        msg["function_call"] = c.function_call
    return _with_stop({"index": c.index, "message": msg, "logprobs": c.logprobs, "finish_reason": c.finish_reason}, c)


def _text_choice(c: _Choice) -> dict[str, Any]:
    lp: dict[str, Any] | None = None
    if c.logprobs is not None:
        lp = {k: c.logprobs.get(k, []) for k in _LOGPROB_LISTS}
    choice = {
        "index": c.index,
        "text": "".join(c.strings.get("text", [])),
        "logprobs": lp,
        "finish_reason": c.finish_reason,
    }
    return _with_stop(choice, c)


def _with_stop(choice: dict[str, Any], c: _Choice) -> dict[str, Any]:
    if c.stop_reason is not None:
        choice["stop_reason"] = c.stop_reason
    return choice


def assemble(
    chunks: list[dict[str, Any]], *, chat: bool, model: str, usage: dict[str, int] | None
) -> dict[str, Any] | None:
    """The ``chat.completion`` (``chat``) or ``text_completion`` body of ``chunks``, or None if incomplete."""
    choices: dict[int, _Choice] = {}
    first: dict[str, Any] | None = None
    fingerprint: Any = None
    for chunk in chunks:
        if first is None:
            first = chunk
        fingerprint = chunk.get("system_fingerprint") or fingerprint
        for raw in chunk.get("choices") or []:
            if not isinstance(raw, dict):
                continue
            idx = int(raw.get("index", 0))
            c = choices.setdefault(idx, _Choice(idx))
            if chat:
                delta = raw.get("delta")
                if isinstance(delta, dict):
                    _add_chat_delta(c, delta)
            elif isinstance(raw.get("text"), str):
                c.strings.setdefault("text", []).append(raw["text"])
            c.add_logprobs(raw.get("logprobs"))
            if raw.get("finish_reason"):
                c.finish_reason = str(raw["finish_reason"])
                c.stop_reason = raw.get("stop_reason")
    if first is None or not choices or any(c.finish_reason is None for c in choices.values()):
        return None
    ordered = [choices[i] for i in sorted(choices)]
    body: dict[str, Any] = {
        "id": first.get("id") or "cmpl-cached",
        "object": "chat.completion" if chat else "text_completion",
        "created": first.get("created") or 0,
        "model": model,
        "choices": [_chat_choice(c) if chat else _text_choice(c) for c in ordered],
    }
    if fingerprint:
        body["system_fingerprint"] = fingerprint
    if usage is not None:
        body["usage"] = usage
    return body
