"""The OpenAPI document: FastAPI's, plus the inference endpoints (plain Starlette routes on the hot path).

Their request bodies are described by the same pydantic models that validate them, so the document is
what schema-driven fuzzers (schemathesis) and client generators need.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gateway.frontdoors.compact_door import CompactRequest
from gateway.frontdoors.messages import MessagesRequest
from gateway.frontdoors.responses import ResponsesRequest
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}
_ENDPOINTS: list[tuple[str, str, type[BaseModel]]] = [
    ("/v1/chat/completions", "createChatCompletion", ChatCompletionRequest),
    ("/v1/completions", "createCompletion", CompletionRequest),
    ("/v1/embeddings", "createEmbedding", EmbeddingRequest),
    ("/v1/responses", "createResponse", ResponsesRequest),
    ("/v1/responses/compact", "compactResponse", CompactRequest),
    ("/v1/messages", "createMessage", MessagesRequest),  # its errors are in Anthropic's shape
]


def _operation(op_id: str, schema_name: str) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "operationId": op_id,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
        },
        "responses": {
            "200": {
                "description": "The completion (JSON), or an SSE stream when `stream` is true",
                "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
            },
            **{
                str(code): {"description": desc, **error}
                for code, desc in (
                    (400, "Invalid request"),
                    (401, "Invalid API key"),
                    (402, "Budget exceeded"),
                    (404, "Unknown model"),
                    (413, "Body too large"),
                    (429, "Rate limited"),
                    (502, "Upstream unavailable"),
                    (504, "Upstream timeout"),
                )
            },
        },
    }


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` include the inference endpoints and the error schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Error"] = _ERROR
        for path, op_id, model in _ENDPOINTS:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
            schema.setdefault("paths", {})[path] = {"post": _operation(op_id, model.__name__)}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
