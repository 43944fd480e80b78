"""HTTP routes of the front doors other than the inference paths (which :mod:`gateway.inference` serves):
stored responses (``GET``/``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``, ``POST
/v1/responses/{id}/cancel``), the token counts (``POST /v1/responses/input_tokens``, ``POST
/v1/messages/count_tokens``). ``POST /v1/responses/compact`` is a front door
(:mod:`gateway.frontdoors.compact_door`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.request_rate import charge_request
from gateway.context import RequestContext
from gateway.errors import GatewayError, InvalidRequest, NotFound, shown
from gateway.frontdoors import messages as ms
from gateway.frontdoors import responses as rs
from gateway.frontdoors.base import tenant_of
from gateway.frontdoors.messages_door import REQUEST_ID_HEADER, anthropic_auth
from gateway.frontdoors.responses_door import previous_record, resolve_references
from gateway.protocol import load_json_object
from gateway.routes import context, gateway_of, json_response, read_body

if TYPE_CHECKING:
    from gateway.runtime import Gateway

router = APIRouter()


async def _caller(request: Request) -> RequestContext:
    """The identified caller, its request counted against its key's ``rpm`` (these requests call no model, but
    take the store's and the gateway's time)."""
    ctx = context(request)
    admission = gateway_of(request).admission
    await admission.identify(ctx, fresh=True)
    await charge_request(admission, ctx)
    return ctx


def _not_found(response_id: str) -> NotFound:
    return NotFound(
        f"Response with id '{shown(response_id)}' not found.", param="response_id", code="response_not_found"
    )


@router.post("/v1/responses/input_tokens")
async def count_input_tokens(request: Request) -> Response:
    """The input tokens of a Responses request (``client.responses.input_tokens.count``): the gateway's own count of
    its translation, with the stored conversation of ``previous_response_id``, as ``/v1/messages/count_tokens``
    counts (tiktoken ``cl100k_base``; no backend called, no ledger row; one of the key's requests per minute)."""
    gw = gateway_of(request)
    ctx = await _caller(request)
    raw = await read_body(request, gw.settings.server.max_body_bytes)
    body = load_json_object(raw)
    if isinstance(body.get("input"), list):
        body["input"] = await resolve_references(gw.responses, tenant_of(ctx), body["input"])
    req = rs.parse_count_request(body)
    if req.model is not None:
        _check_model(gw, req.model)
    history: list[dict[str, Any]] = []
    if req.previous_response_id:
        history = (await previous_record(gw.responses, tenant_of(ctx), req.previous_response_id))["messages"]
    tokens = (await gw.pipeline.features("chat", rs.to_chat(req, history), len(raw))).prompt_tokens
    return json_response({"object": "response.input_tokens", "input_tokens": tokens})


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> Response:
    """A stored response of the caller's (404 for another key's)."""
    ctx = await _caller(request)
    record = await gateway_of(request).responses.get(tenant_of(ctx), response_id)
    if record is None:
        raise _not_found(response_id)
    return json_response(rs.as_stored(record["response"]))


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request) -> Response:
    """OpenAI cancels background responses only; this gateway runs none (``background: true`` is refused), so a
    stored response of the caller's is a 400, as OpenAI answers for one that was not created in the background, and
    any other id a 404."""
    ctx = await _caller(request)
    if await gateway_of(request).responses.get(tenant_of(ctx), response_id) is None:
        raise _not_found(response_id)
    raise InvalidRequest(
        "Only responses created with background: true can be cancelled, and this gateway runs no background "
        "responses: this one has finished.",
        param="response_id",
    )


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request) -> Response:
    """The items a stored response of the caller's was given: the earlier turns' inputs and outputs when it
    continued a conversation, then its own input. OpenAI's paging: ``limit`` (1-100, default 20), ``order``
    (``desc``, the default, or ``asc``) and ``after`` (an item id)."""
    ctx = await _caller(request)
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"Invalid value for 'order': {order!r}; expected 'asc' or 'desc'.", param="order")
    raw_limit = query.get("limit", "20")
    limit = int(raw_limit) if raw_limit.isdigit() else 0
    if not 1 <= limit <= 100:
        raise InvalidRequest(f"Invalid value for 'limit': {raw_limit!r}; expected 1 to 100.", param="limit")
    record = await gateway_of(request).responses.get(tenant_of(ctx), response_id)
    if record is None:
        raise _not_found(response_id)
    items: list[dict[str, Any]] = record.get("input_items", [])
    if order == "desc":
        items = items[::-1]
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{shown(after)}' in this response.", param="after")
        items = items[len(ids) - ids[::-1].index(after) :]  # after its last copy: a record with one twice still ends
    page = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> Response:
    """Forget a stored response of the caller's."""
    ctx = await _caller(request)
    if not await gateway_of(request).responses.delete(tenant_of(ctx), response_id):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    """Anthropic's token count for a Messages request: the gateway's own count of its translation, the
    figure routing and budgets use (errors in Anthropic's shape)."""
    gw = gateway_of(request)
    ctx = context(request)
    anthropic_auth(ctx)
    ids = {REQUEST_ID_HEADER: ctx.request_id, "x-request-id": ctx.request_id}  # as /v1/messages answers
    try:
        await gw.admission.identify(ctx, fresh=True)
        await charge_request(gw.admission, ctx)  # one of the key's requests per minute, nothing else
        raw = await read_body(request, gw.settings.server.max_body_bytes)
        body = load_json_object(raw)
        req = ms.parse_request(body, count_only=True)
        _check_model(gw, req.model)
        tokens = (await gw.pipeline.features("chat", ms.to_chat(req), len(raw))).prompt_tokens
    except GatewayError as err:
        return json_response(ms.error_body(err, ctx.request_id), ms.error_status(err), {**err.headers, **ids})
    return json_response({"input_tokens": tokens}, headers=ids)


def _check_model(gw: Gateway, model: str) -> None:
    """A token count names a configured model or route (it calls none, but counts as that request would).

    Raises:
        NotFound: ``model`` is neither.
    """
    if model not in gw.router.models and model not in gw.router.routes:
        raise NotFound(f"model: {model}", param="model")
