"""``POST /v1/messages`` (Anthropic) through the pipeline."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.frontdoors import messages as ms
from gateway.frontdoors.base import request_body
from gateway.frontdoors.messages_stream import render as render_stream
from gateway.pipeline import JSONResult, Result, StreamResult


def anthropic_auth(ctx: RequestContext) -> None:
    """Anthropic clients send their key as ``x-api-key``; ``Authorization: Bearer`` works too (and wins)."""
    if ctx.api_key is None:
        key = ctx.headers.get("x-api-key", "").strip()
        ctx.api_key = key or None


#: Where the Anthropic SDK reads a response's request id (``APIStatusError.request_id`` too).
REQUEST_ID_HEADER = "request-id"


class MessagesDoor:
    """One ``/v1/messages`` request."""

    api = "messages"
    request_id_header: str | None = REQUEST_ID_HEADER

    def __init__(self) -> None:
        self.req: ms.CountTokensRequest | None = None

    def prepare(self, ctx: RequestContext) -> None:
        ctx.api = self.api
        anthropic_auth(ctx)

    async def to_chat(self, ctx: RequestContext, raw: bytes) -> bytes:
        body = request_body(ctx, raw)
        self.req = ms.parse_request(body)
        return orjson.dumps(ms.to_chat(self.req))

    async def render(self, ctx: RequestContext, result: Result) -> Result:
        req = self.req
        assert req is not None
        headers = {**result.headers, REQUEST_ID_HEADER: ctx.request_id}
        if isinstance(result, JSONResult):
            return JSONResult(ms.from_chat(req, result.body), headers, result.status)
        model = ctx.chosen_model or req.model
        frames = render_stream(
            result.frames, model, ctx.prompt_tokens_estimate, req.stop_sequences, thinking=ms.shows_thinking(req)
        )
        return StreamResult(frames, headers)

    def error_body(self, err: GatewayError, request_id: str | None) -> dict[str, Any]:
        return ms.error_body(err, request_id)

    def error_status(self, err: GatewayError) -> int:
        return ms.error_status(err)
