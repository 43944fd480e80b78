"""``POST /v1/responses`` through the pipeline, with stored responses for ``previous_response_id``."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.errors import GatewayError, InvalidRequest, NotFound, shown
from gateway.frontdoors import responses as rs
from gateway.frontdoors import responses_settings as settings
from gateway.frontdoors.base import request_body, tenant_of
from gateway.frontdoors.responses_stream import render as render_stream
from gateway.frontdoors.store import ResponseStore
from gateway.pipeline import JSONResult, Result, StreamResult

log = logging.getLogger("gateway.frontdoors.responses")


def previous_not_found(response_id: str) -> NotFound:
    """The 404 for a ``previous_response_id`` the caller has no stored response of."""
    return NotFound(
        f"Previous response with id '{shown(response_id)}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


async def previous_record(store: ResponseStore, tenant: str, response_id: str) -> dict[str, Any]:
    """The caller's stored response ``response_id`` that a turn continues (``previous_response_id``).

    Raises:
        NotFound: the caller has no stored response of that id (:func:`previous_not_found`).
    """
    record = await store.get(tenant, response_id)
    if record is None:
        raise previous_not_found(response_id)
    return record


async def resolve_references(store: ResponseStore, tenant: str, items: list[Any]) -> list[Any]:
    """``items`` (a Responses input: ``/v1/responses``, its ``input_tokens`` and ``compact``) with each
    ``item_reference`` replaced by the caller's stored output item it names (what the Vercel AI SDK and Codex-style
    clients send for an earlier turn's answer while ``store`` is on): the item's id names its response
    (:func:`rs.response_of_item`), whose record holds it.

    Raises:
        NotFound: an id this caller has no stored output item of (another key's, a ``store: false`` answer's,
            expired, or not an output item's id).
    """
    records: dict[str, dict[str, Any] | None] = {}
    out: list[Any] = []
    for index, item in enumerate(items):
        if not (isinstance(item, dict) and item.get("type") == "item_reference"):
            out.append(item)
            continue
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise InvalidRequest("An item_reference needs its 'id'.", param=f"input[{index}].id")
        response_id = rs.response_of_item(item_id)
        if response_id is not None and response_id not in records:
            records[response_id] = await store.get(tenant, response_id)
        record = records.get(response_id) if response_id is not None else None
        found = [o for o in (record or {}).get("response", {}).get("output", []) if o.get("id") == item_id]
        if not found:
            raise NotFound(
                f"Item with id '{shown(item_id)}' not found. Items are not kept when 'store' is false.",
                param=f"input[{index}].id",
                code="item_not_found",
            )
        out.append(found[0])
    return out


class ResponsesDoor:
    """One ``/v1/responses`` request."""

    api = "responses"
    request_id_header: str | None = None

    def __init__(self, store: ResponseStore, max_record_bytes: int = 16 * 1024 * 1024) -> None:
        self.store = store
        self.max_record_bytes = max_record_bytes
        self.req: rs.ResponsesRequest | None = None
        self.history: list[dict[str, Any]] = []  # the conversation before this turn, as chat messages
        self.history_items: list[dict[str, Any]] = []  # and as the Responses API's items
        self.response_id = rs.new_id("resp")

    def prepare(self, ctx: RequestContext) -> None:
        ctx.api = self.api

    async def to_chat(self, ctx: RequestContext, raw: bytes) -> bytes:
        body = request_body(ctx, raw)
        if isinstance(body.get("input"), list):
            body["input"] = await resolve_references(self.store, tenant_of(ctx), body["input"])
        req = rs.parse_request(body)
        if req.store is False:
            ctx.extra["store"] = False  # nothing of it is kept: not by the store, nor by the quality monitor
        if req.previous_response_id:
            record = await previous_record(self.store, tenant_of(ctx), req.previous_response_id)
            size = int(record.get("size", 0)) + 2 * len(raw)  # a turn's input is kept as messages and as items
            if req.store is not False and size > self.max_record_bytes:
                # Each stored response holds its whole conversation: without a bound a chain of large turns
                # grows every record, and the store's memory, without end.
                raise InvalidRequest(
                    f"The conversation is too large to store (~{size} bytes, limit {self.max_record_bytes}): "
                    "continue it with store: false, or start a new one.",
                    param="previous_response_id",
                    code="conversation_too_large",
                )
            self.history = record["messages"]
            # records stored before input items were kept list the earlier turns' outputs only
            self.history_items = record.get("input_items", []) + record["response"]["output"]
        _refuse_duplicate_ids(req.input, self.history_items)
        self.req = req
        return orjson.dumps(rs.to_chat(req, self.history))

    async def render(self, ctx: RequestContext, result: Result) -> Result:
        req = self.req
        assert req is not None
        if isinstance(result, JSONResult):
            if result.status != 200:
                return result
            response = rs.from_chat(req, self.response_id, result.body)
            await self._keep(ctx, response)
            return JSONResult(response, result.headers)
        skeleton = rs.skeleton(req, self.response_id)
        skeleton["model"] = ctx.chosen_model or req.model

        async def on_done(response: dict[str, Any]) -> None:
            await self._keep(ctx, response)

        frames = render_stream(result.frames, skeleton, on_done, logprobs=settings.wants_logprobs(req))
        return StreamResult(frames, result.headers)

    async def _keep(self, ctx: RequestContext, response: dict[str, Any]) -> None:
        """Store the finished response when asked (the default); a store failure costs the client only
        the ability to continue from it, never the answer it already paid for."""
        req = self.req
        assert req is not None
        if req.store is False:
            return
        messages = self.history + rs.input_messages(req) + rs.output_messages(response["output"])
        record: dict[str, Any] = {
            "response": response,
            "messages": messages,
            "input_items": self.history_items + rs.input_items(req),
        }
        size = len(orjson.dumps(record))
        if size > self.max_record_bytes:  # a long answer took it past the bound: not kept (logged)
            log.warning("response %s not stored: %d bytes, over responses.max_record_bytes", response["id"], size)
            return
        record["size"] = size
        try:
            await self.store.put(tenant_of(ctx), response["id"], record)
        except GatewayError as err:
            log.warning("could not store response %s: %s", response["id"], err.message)

    def error_body(self, err: GatewayError, request_id: str | None) -> dict[str, Any]:
        return err.to_body()

    def error_status(self, err: GatewayError) -> int:
        return err.status


def _refuse_duplicate_ids(given: Any, history: list[dict[str, Any]]) -> None:
    """OpenAI's 400 for an input item whose id is already in the conversation (an earlier turn's output sent back
    with ``previous_response_id``, as some agent SDKs do) or twice in the input: kept, the history held each call
    twice, one without its tool replies, and listing the input items paged back to the first copy for ever."""
    if not isinstance(given, list):
        return
    seen = {item.get("id") for item in history if isinstance(item, dict) and item.get("id")}
    for item in given:
        item_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item_id, str) or not item_id:
            continue
        if item_id in seen:
            raise InvalidRequest(
                f"Duplicate item found with id {shown(item_id)}. Remove duplicate items from your input and try again.",
                param="input",
                code="duplicate_item",
            )
        seen.add(item_id)
