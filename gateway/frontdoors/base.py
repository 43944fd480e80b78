"""What the inference handler needs from a front door (one instance per request)."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.pipeline import Result
from gateway.protocol import load_json_object


class FrontDoor(Protocol):
    """Translates one request into chat completions and the pipeline's result back."""

    #: the ledger's ``endpoint`` for these requests
    api: str
    #: the response header this API's SDK reads the request id from, besides ``x-request-id`` (None: that one)
    request_id_header: str | None

    def prepare(self, ctx: RequestContext) -> None:
        """Adjust the new context before the caller is identified (e.g. read another auth header)."""
        ...

    async def to_chat(self, ctx: RequestContext, raw: bytes) -> bytes:
        """The chat-completions body for the request body ``raw`` (raises :class:`GatewayError`)."""
        ...

    async def render(self, ctx: RequestContext, result: Result) -> Result:
        """The pipeline's chat result in this API."""
        ...

    def error_body(self, err: GatewayError, request_id: str | None) -> dict[str, Any]:
        """``err`` in this API's error shape."""
        ...

    def error_status(self, err: GatewayError) -> int:
        """The HTTP status this API answers ``err`` with (``err.status``, unless the API has its own, e.g.
        Anthropic's 529 for an overload)."""
        ...


def tenant_of(ctx: RequestContext) -> str:
    """Whose stored state a request may see: its virtual key, or everyone's when keys are off."""
    return ctx.key_id or "-"


def request_body(ctx: RequestContext, raw: bytes) -> dict[str, Any]:
    """A front door's request body as a JSON object (a 400 otherwise), its ``model`` noted on ``ctx`` (the ledger's
    ``requested_model``, cut to 256 characters) before anything else can fail."""
    body = load_json_object(raw)
    if isinstance(body.get("model"), str):
        ctx.requested_model = body["model"][:256]
    return body
