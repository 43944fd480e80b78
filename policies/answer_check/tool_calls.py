"""The answer check of a tool-call answer: well-formed or not.

The text check (:class:`policies.answer_check.AnswerCheck`) reads an answer's words; a tool call has none, so it
saw an empty answer and escalated every one. What a cheap model gets wrong in a tool call shows in its form: a
function the request did not offer, arguments that are not a JSON object, a required argument missing. A
well-formed call is accepted (its values are not judged); a malformed one escalates.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["check_tool_calls"]


def _offered(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The functions the request offers (``tools``, or the deprecated ``functions``), by name: their parameter
    schemas."""
    offered: dict[str, dict[str, Any]] = {}
    specs = [t.get("function") for t in request.get("tools") or [] if isinstance(t, dict)]
    specs += list(request.get("functions") or [])
    for fn in specs:
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            offered[fn["name"]] = params if isinstance(params, dict) else {}
    return offered


def _calls(answer: dict[str, Any]) -> list[Any]:
    """The first choice's tool calls (or its deprecated ``function_call``, as one call)."""
    choices = answer.get("choices") or []
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        return []
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        return calls
    legacy = message.get("function_call")
    return [{"function": legacy}] if isinstance(legacy, dict) else []


def check_tool_calls(answer: dict[str, Any], request: dict[str, Any]) -> tuple[bool, str] | None:
    """``(well_formed, reason)`` for a chat ``answer`` that calls tools, None for one that does not."""
    calls = _calls(answer)
    if not calls:
        return None
    offered = _offered(request)
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(fn, dict) or name not in offered:
            return False, f"tool call to a function the request did not offer ({name!r})"
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            return False, f"tool call to {name} with arguments that are not JSON"
        if not isinstance(args, dict):
            return False, f"tool call to {name} with arguments that are not a JSON object"
        required = offered[name].get("required")
        missing = [r for r in required if isinstance(r, str) and r not in args] if isinstance(required, list) else []
        if missing:
            return False, f"tool call to {name} without {', '.join(missing)}"
    names = ", ".join(sorted({c["function"]["name"] for c in calls}))
    return True, f"well-formed tool call ({names})"
