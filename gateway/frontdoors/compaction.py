"""The compaction items this gateway writes (``POST /v1/responses/compact``) and reads back as input.

OpenAI's compaction item carries the compacted conversation as ``encrypted_content`` that only OpenAI reads. This
gateway's carries the summary a model wrote, encoded (not encrypted: it holds nothing the client did not send or
receive) behind a version prefix, so that an item from another service is told apart and refused with a 400 rather
than sent to a model as noise. As input, the item becomes an assistant message that opens with
:data:`SUMMARY_HEADER`: the model's own account of the turns the client no longer sends.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from gateway.errors import InvalidRequest

#: What the ``encrypted_content`` of this gateway's compaction items starts with.
PREFIX = "gwc1."
#: The first line of the assistant message a compaction item becomes.
SUMMARY_HEADER = "Summary of the earlier conversation (compacted):"


def encode(summary: str) -> str:
    """The ``encrypted_content`` for ``summary``."""
    return PREFIX + base64.urlsafe_b64encode(summary.encode()).decode("ascii")


def decode(item: dict[str, Any], where: str) -> str:
    """The summary in the compaction item ``item`` (``input[i]`` at ``where``).

    Raises:
        InvalidRequest: the item is not one this gateway wrote (OpenAI's, say) or is damaged.
    """
    content = item.get("encrypted_content")
    param = f"{where}.encrypted_content"
    if not isinstance(content, str):
        raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if not content.startswith(PREFIX):
        raise InvalidRequest(
            f"The compaction item at '{where}' was not made by this gateway (another service's encrypted content "
            "cannot be read here): compact the conversation through this gateway, or send its messages instead.",
            param=param,
            code="invalid_encrypted_content",
        )
    try:
        return base64.b64decode(content[len(PREFIX) :], altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise InvalidRequest(
            f"The compaction item at '{where}' is damaged: its encrypted_content does not decode.",
            param=param,
            code="invalid_encrypted_content",
        ) from None


def as_message(summary: str) -> dict[str, Any]:
    """The chat message a compaction item holding ``summary`` stands for."""
    return {"role": "assistant", "content": f"{SUMMARY_HEADER}\n{summary}"}


def item(summary: str, item_id: str) -> dict[str, Any]:
    """A ``compaction`` output item holding ``summary``."""
    return {"id": item_id, "type": "compaction", "encrypted_content": encode(summary)}
