"""HTTP routes of the front doors other than the inference paths (which :mod:`gateway.inference` serves):
stored responses (``GET``/``DELETE /v1/responses/{id}``) and ``POST /v1/messages/count_tokens``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.context import RequestContext
from gateway.errors import NotFound
from gateway.frontdoors.base import tenant_of
from gateway.routes import context, gateway_of, json_response

router = APIRouter()


async def _caller(request: Request) -> RequestContext:
    ctx = context(request)
    await gateway_of(request).admission.identify(ctx)
    return ctx


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> Response:
    """A stored response of the caller's (404 for another key's)."""
    ctx = await _caller(request)
    record = await gateway_of(request).responses.get(tenant_of(ctx), response_id)
    if record is None:
        raise _not_found(response_id)
    return json_response(record["response"])


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> Response:
    """Forget a stored response of the caller's."""
    ctx = await _caller(request)
    if not await gateway_of(request).responses.delete(tenant_of(ctx), response_id):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})
