"""What the quality monitor shows its reference and judge of a client's request, and what that may cost."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.features import content_text
from gateway.tokens import bound_from_json

__all__ = ["conversation", "has_media", "prompt_bound"]


def has_media(messages: Any) -> bool:
    """Whether any message carries an image or audio part (the judge reads text only)."""
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") not in (None, "text") for p in content
        ):
            return True
    return False


def conversation(messages: Any, question: str) -> str:
    """What the judge is shown as the user's question: ``question`` (the last user message) alone, or, when the
    request had a system prompt or earlier turns, those too, so an answer is judged in its context."""
    if not isinstance(messages, list) or len(messages) < 2:
        return question
    lines: list[str] = []
    for message in messages[:-1]:
        if not isinstance(message, dict):
            continue
        content, _ = content_text(message.get("content"))
        if content:
            lines.append(f"{str(message.get('role', 'user')).capitalize()}: {content}")
    if not lines:
        return question
    return "[Conversation so far]\n" + "\n".join(lines) + f"\n\n[Last user message]\n{question}"


def prompt_bound(messages: Any) -> int:
    """At most how many tokens ``messages`` make as a prompt (:func:`gateway.tokens.bound_from_json`, as admission's
    reserve bounds a request's)."""
    return bound_from_json(orjson.dumps(messages, default=str))
