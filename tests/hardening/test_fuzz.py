"""Schema-driven fuzzing of the whole API with schemathesis: several thousand generated requests (valid and
deliberately invalid) across every documented operation, in process through the ASGI app, over an upstream
served on a loopback socket. Every answer must be below 500, and every error must be in the OpenAI shape.

Deterministic: hypothesis is derandomised (the same cases every run) and keeps no example database.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.schemas import OpenApiSchema
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.config import settings_from_dict
from tests.helpers.servers import run_asgi_server

MASTER = "fuzz-master-key"
# Generated cases per operation: the inference endpoints take the most.
EXAMPLES = {
    "/v1/chat/completions": 600,
    "/v1/completions": 700,
    "/v1/embeddings": 500,
    "/v1/responses": 300,
    "/v1/messages": 300,
}
OTHER_EXAMPLES = 150  # per other operation (those without any input get their one case)
FUZZ_SETTINGS = {
    "derandomize": True,
    "database": None,
    "deadline": None,
    "phases": [Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    "suppress_health_check": list(HealthCheck),
    "print_blob": False,
}


# -- an upstream that always answers well (the gateway's own handling is what is fuzzed) ---------------------


async def upstream(request: Request) -> Response:
    if request.method == "GET":
        return JSONResponse({"object": "list", "data": []})
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return JSONResponse({"error": {"message": "bad json", "type": "BadRequestError"}}, status_code=400)
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if request.url.path.endswith("/embeddings"):
        data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
        return JSONResponse({"object": "list", "data": data, "model": "e", "usage": usage})
    chat = request.url.path.endswith("/chat/completions")
    if body.get("stream"):
        kind = "chat.completion.chunk" if chat else "text_completion"
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        choice.update({"delta": {"content": "ok"}} if chat else {"text": "ok"})
        chunks = [
            {"id": "x", "object": kind, "created": 1, "model": "u", "choices": [choice]},
            {"id": "x", "object": kind, "created": 1, "model": "u", "choices": [], "usage": usage},
        ]
        sse = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        return Response(sse, media_type="text/event-stream")
    choice = {"index": 0, "finish_reason": "stop"}
    choice.update({"message": {"role": "assistant", "content": "ok"}} if chat else {"text": "ok"})
    kind = "chat.completion" if chat else "text_completion"
    return JSONResponse({"id": "x", "object": kind, "created": 1, "model": "u", "choices": [choice], "usage": usage})


UPSTREAM_APP = Starlette(routes=[Route("/{path:path}", upstream, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def api_schema() -> Iterator[OpenApiSchema]:
    old = os.environ.get("GATEWAY_MASTER_KEY")
    os.environ["GATEWAY_MASTER_KEY"] = MASTER
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp, run_asgi_server(UPSTREAM_APP) as up:
        gw_settings = settings_from_dict(
            {
                "models": [
                    {
                        "name": "m",
                        "backend": "openai",
                        "base_url": up + "/v1",
                        "upstream_model": "u",
                        "quality": 7,
                        "input_cost_per_token": "0.000001",
                        "output_cost_per_token": "0.000002",
                    },
                    {"name": "big", "backend": "openai", "base_url": up + "/v1", "upstream_model": "gpt-4"},
                    {"name": "emb", "backend": "openai", "base_url": up + "/v1", "mode": "embedding"},
                ],
                "retry": {"max_attempts": 2, "backoff_base_ms": 0},
                "cache": {"enabled": True},
                "server": {"metrics_scrape_seconds": 3600, "max_body_bytes": 256 * 1024},
                "ledger": {"url": f"sqlite+aiosqlite:///{Path(tmp) / 'ledger.db'}", "flush_interval_seconds": 0.2},
            }
        )
        app = create_app(gw_settings)
        document = _steer(copy.deepcopy(app.openapi()))
        schema = schemathesis.openapi.from_dict(document)
        schema.app = app
        schema.location = "/openapi.json"
        try:
            yield schema
        finally:
            from schemathesis.python import asgi

            asgi.shutdown_lifespans()  # the gateway's lifespan: flush the ledger, close the clients
            if old is None:
                os.environ.pop("GATEWAY_MASTER_KEY", None)
            else:
                os.environ["GATEWAY_MASTER_KEY"] = old


_TIME = {
    "anyOf": [
        {"type": "string", "pattern": "^-?[0-9]{1,22}(\\.[0-9]{1,3})?(e[0-9]{1,3})?[smhdw]?$"},
        {"type": "string", "format": "date"},
        {"type": "string"},
    ]
}
_GROUP = {"type": "string", "enum": ["model", "key", "team", "user", "route", "day"]}


def _query(**params: Any) -> list[dict[str, Any]]:
    return [{"name": k, "in": "query", "required": False, "schema": v} for k, v in params.items()]


def _steer(document: dict[str, Any]) -> dict[str, Any]:
    """Point valid cases at the configured models (random names would all stop at the 404), and describe
    what the admin and spend routes read by hand (query strings, JSON bodies) so they are fuzzed too."""
    components = document["components"]["schemas"]
    names = {
        "ChatCompletionRequest": ["m", "big", "auto"],
        "CompletionRequest": ["m", "auto"],
        "EmbeddingRequest": ["emb", "m"],
        "ResponsesRequest": ["m", "auto"],
        "MessagesRequest": ["m", "big"],
    }
    for name, models in names.items():
        components[name]["properties"]["model"] = {"type": "string", "enum": models}
    paths = document["paths"]
    paths["/admin/spend"]["get"]["parameters"] = _query(
        group_by=_GROUP, start=_TIME, end=_TIME, key_id={"type": "string"}
    )
    paths["/v1/spend"]["get"]["parameters"] = _query(group_by=_GROUP, start=_TIME, end=_TIME)
    paths["/admin/dashboard/data"]["get"]["parameters"] = _query(start=_TIME, end=_TIME)
    key = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "team": {"type": "string"},
            "budget_usd": {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]},
            "rpm": {"type": "integer", "minimum": 1},
            "tpm": {"type": "integer", "minimum": 1},
        },
    }
    paths["/admin/keys"]["post"]["requestBody"] = {"required": True, "content": {"application/json": {"schema": key}}}
    chat = {"$ref": "#/components/schemas/ChatCompletionRequest"}
    paths["/admin/route/explain"]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": chat}},
    }
    return document


def check(response: schemathesis.Response, case: schemathesis.Case) -> None:
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, (
        f"{where} -> {response.status_code}: {response.text[:500]}\n{case.as_curl_command()}"
    )
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(f"{where} -> {response.status_code} is not JSON: {response.text[:200]}") from None
        if case.operation.path.startswith("/v1/messages"):  # Anthropic's shape on its API
            assert isinstance(body, dict) and body.get("type") == "error", f"{where}: {body}"
            assert set(body["error"]) == {"type", "message"}, f"{where}: {body}"
        else:
            assert isinstance(body, dict) and set(body) == {"error"}, f"{where}: {body}"
            assert set(body["error"]) == {"message", "type", "param", "code"}, f"{where}: {body}"
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def fuzz(strategy: st.SearchStrategy[schemathesis.Case], max_examples: int) -> Counter[str]:
    """Run ``max_examples`` generated cases through the app; returns a count of the statuses seen."""
    statuses: Counter[str] = Counter()

    @given(case=strategy)
    @settings(max_examples=max_examples, **FUZZ_SETTINGS)
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
        statuses[f"{case.method} {case.operation.path} {response.status_code}"] += 1
        check(response, case)

    run()
    return statuses


def both_modes(operation: Any) -> st.SearchStrategy[schemathesis.Case]:
    return st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))


@pytest.mark.parametrize("path", list(EXAMPLES))
def test_fuzz_inference_endpoint(api_schema: OpenApiSchema, path: str) -> None:
    statuses = fuzz(both_modes(api_schema[path]["POST"]), EXAMPLES[path])
    print(f"\n{path}: {sum(statuses.values())} cases: {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= EXAMPLES[path] * 0.9
    assert any(k.endswith(" 200") for k in statuses), "no generated case got through to the upstream"
    assert any(k.endswith(" 400") for k in statuses), "no generated case was refused"


def test_fuzz_other_operations(api_schema: OpenApiSchema) -> None:
    total: Counter[str] = Counter()
    for path, methods in api_schema.items():
        if path in EXAMPLES:
            continue
        for method in methods:
            operation = api_schema[path][method]
            has_input = bool(operation.path_parameters or operation.query or operation.body)
            strategy = both_modes(operation) if has_input else operation.as_strategy(GenerationMode.POSITIVE)
            total += fuzz(strategy, OTHER_EXAMPLES if has_input else 1)
    print(f"\nother operations: {sum(total.values())} cases: {dict(sorted(total.items()))}")
    assert len({k.rsplit(" ", 1)[0] for k in total}) >= 12  # every documented operation was exercised
