"""The shape a cached answer must have to be served: checked on every read.

The gateway stores only answers it served, but the store is shared (another gateway version, or anything else
writing under the same prefix): an entry that is valid JSON yet not an answer (``usage`` a string, a message
that is not an object) must be a miss, never a 500 or a broken stream. Fields beyond these are kept as they are.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Usage(_Open):
    prompt_tokens: StrictInt = 0
    completion_tokens: StrictInt = 0
    total_tokens: StrictInt = 0


class _Message(_Open):
    role: StrictStr = "assistant"
    content: StrictStr | list[Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(_Open):
    index: StrictInt = 0
    message: _Message | None = None  # chat
    text: StrictStr | None = None  # completions
    finish_reason: StrictStr | None = None


class _Answer(_Open):
    model: StrictStr | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    data: list[Any] | None = None  # embeddings


def servable(body: dict[str, Any]) -> bool:
    """Whether ``body`` has the shape of a chat, completions or embeddings response the gateway can serve."""
    try:
        _Answer.model_validate(body)
    except ValidationError:
        return False
    return True
