"""``POST /v1/responses/compact`` (``client.responses.compact``) through the pipeline.

A conversation (``input``, continuing ``previous_response_id`` when given) comes back as OpenAI's compaction does:
its user messages as they were, then one ``compaction`` item standing for everything else (instructions, the
assistant's answers, tool calls and their results). The item holds a summary that the requested model (or
route) writes from a transcript of the conversation, sent as one system and one user message so that every chat
backend takes it whatever its template or tool support; :mod:`gateway.frontdoors.compaction` has the item's format.
The summary is a chat completion like any other: authenticated, routed, budgeted, cached and in the ledger (as
``compact``). Nothing is stored: the client sends the compacted window as the next turn's input.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from pydantic import Field, StrictStr

from gateway.context import RequestContext
from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.frontdoors import compaction
from gateway.frontdoors import responses as rs
from gateway.frontdoors import responses_settings as settings
from gateway.frontdoors.base import request_body, tenant_of
from gateway.frontdoors.responses_door import previous_record, resolve_references
from gateway.frontdoors.store import ResponseStore
from gateway.pipeline import JSONResult, Result
from gateway.protocol import validate

#: The system message of the summarising request.
INSTRUCTIONS = (
    "You compact conversations between a user and an AI assistant. The conversation is given between <conversation> "
    "tags. Write a summary from which the assistant can carry on without the original turns: the user's goals, "
    "constraints and preferences; what was decided; facts, figures and results established, tool results included, "
    "with their exact values; what the assistant said, did or promised; and what is still open. The user's own "
    "messages are kept word for word beside the summary, so describe them only as far as the rest needs. Write only "
    "the summary, in the conversation's language."
)


class CompactRequest(rs.ResponsesBody):
    """``POST /v1/responses/compact``: the Responses request's conversation fields (``input`` may be left out when
    ``previous_response_id`` holds the conversation); the rest of a Responses request is not read."""

    model: StrictStr = Field(min_length=1)
    input: StrictStr | list[dict[str, Any]] = []


def transcript(messages: list[dict[str, Any]]) -> str:
    """Chat ``messages`` as plain text, one block per message, tool calls and results spelled out."""
    blocks: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(p["text"] if p["type"] == "text" else "[image]" for p in content)
        role = message["role"]
        if role == "tool":
            blocks.append(f"[tool result for {message['tool_call_id']}]\n{content}")
            continue
        if content:
            blocks.append(f"[{role}]\n{content}")
        for call in message.get("tool_calls") or []:
            fn = call["function"]
            blocks.append(f"[assistant called the tool {fn['name']} as {call['id']}]\n{fn['arguments']}")
    return "\n\n".join(blocks)


class CompactDoor:
    """One ``/v1/responses/compact`` request."""

    api = "compact"  # the ledger's endpoint column holds 16 characters
    request_id_header: str | None = None

    def __init__(self, store: ResponseStore) -> None:
        self.store = store
        self.user_items: list[dict[str, Any]] = []  # the conversation's user messages, as items, in order

    def prepare(self, ctx: RequestContext) -> None:
        ctx.api = self.api

    async def to_chat(self, ctx: RequestContext, raw: bytes) -> bytes:
        body = request_body(ctx, raw)
        body.pop("stream", None)  # compaction has no streamed form
        if isinstance(body.get("input"), list):
            body["input"] = await resolve_references(self.store, tenant_of(ctx), body["input"])
        req = validate(CompactRequest, body)
        ctx.extra["store"] = False  # the conversation is the client's to keep: not for the quality monitor either
        history: list[dict[str, Any]] = []
        items: list[dict[str, Any]] = []
        if req.previous_response_id:
            record = await previous_record(self.store, tenant_of(ctx), req.previous_response_id)
            history = record["messages"]
            items = record.get("input_items", []) + record["response"]["output"]
        conversation = rs.to_chat(req, history)["messages"]  # validates the input; 400 when there is none
        items += rs.input_items(req)
        self.user_items = [i for i in items if i.get("type") == "message" and i.get("role") == "user"]
        chat: dict[str, Any] = {
            "model": req.model,
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": f"<conversation>\n{transcript(conversation)}\n</conversation>"},
            ],
        }
        for name in (*settings.FORWARDED, "user", "gateway"):
            value = getattr(req, name)
            if value is not None:
                chat[name] = value
        return orjson.dumps(chat)

    async def render(self, ctx: RequestContext, result: Result) -> Result:
        assert isinstance(result, JSONResult)  # the summarising request is never streamed
        if result.status != 200:
            return result
        choice = (result.body.get("choices") or [{}])[0]
        summary = (choice.get("message") or {}).get("content")
        if not isinstance(summary, str) or not summary.strip():
            err = UpstreamUnavailable(
                f"model '{ctx.chosen_model or ctx.requested_model}' wrote no summary for the compaction",
                backend=ctx.chosen_model or "",
            )
            # The ledger row is written once the request next yields (the pipeline scheduled it): it records this
            # failure, with the answer's cost, which the upstream charged whatever the answer held.
            ctx.status_code, ctx.error_type, ctx.error_message = err.status, type(err).__name__, err.message
            raise err
        usage = result.body.get("usage")
        response = {
            "id": rs.new_id("resp"),
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": [*self.user_items, compaction.item(summary.strip(), rs.new_id("cmp"))],
            "usage": rs.usage_of(usage if isinstance(usage, dict) else {}),
        }
        return JSONResult(response, result.headers)

    def error_body(self, err: GatewayError, request_id: str | None) -> dict[str, Any]:
        return err.to_body()

    def error_status(self, err: GatewayError) -> int:
        return err.status
