"""Validation the first probe found missing (issue 20), over a real socket: a message without ``content`` is a
400 naming the field; constraints and capability checks apply to an explicit model too; a chat request to an
embedding model is a 400; a duplicated ``Authorization`` header is a 400 on every endpoint that reads it.
Every refused inference request still has its ledger row."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hardening.gateways import master_key, sim_gateway
from tests.hardening.support import LedgerFile, assert_openai_error
from tests.helpers.servers import RunningGateway

MASTER = "sk-master-" + uuid.uuid4().hex
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, LedgerFile]]:
    tmp: Path = tmp_path_factory.mktemp("validation")
    with master_key(MASTER), sim_gateway(tmp) as gw:
        # "cheap" cannot do JSON mode: a capability an explicit request may need
        yield gw, LedgerFile(tmp / "ledger.db")


@pytest.fixture(scope="module", autouse=True)
def _no_json_mode_on_cheap(env: tuple[RunningGateway, LedgerFile]) -> None:
    gw, _ = env
    facts = gw.gateway.router.models["cheap"]
    object.__setattr__(facts.spec, "supports_json_mode", False)


def post(
    env: tuple[RunningGateway, LedgerFile], body: dict[str, Any], path: str = "/v1/chat/completions", **kw: Any
) -> httpx.Response:
    gw, _ = env
    headers = {"authorization": f"Bearer {MASTER}", **kw.pop("headers", {})}  # a master key turns auth on
    return httpx.post(gw.base_url + path, json=body, timeout=10, headers=headers, **kw)


async def refused(env: tuple[RunningGateway, LedgerFile], r: httpx.Response, param: str | None) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    err = assert_openai_error(r.json())
    assert err["param"] == param, err
    row = await env[1].one_row(r.headers["x-request-id"])
    assert row["status_code"] == 400
    return err


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "system", "content": "be brief"}, {"role": "user", "content": None}], "messages[1].content"),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant"}, {"role": "user", "content": "y"}],
            "messages[1].content",
        ),
        ([{"role": "tool", "tool_call_id": "c1"}], "messages[0].content"),
    ],
)
async def test_message_without_content_is_a_400_naming_it(env: Any, messages: list[dict[str, Any]], param: str) -> None:
    r = post(env, {"model": "cheap", "messages": messages}, headers={"x-request-id": uuid.uuid4().hex})
    err = await refused(env, r, param)
    assert param in err["message"]


def test_assistant_tool_calls_without_content_are_fine(env: Any) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert post(env, {"model": "cheap", "messages": messages}).status_code == 200


@pytest.mark.parametrize(
    ("body", "headers", "param"),
    [
        ({}, {"x-gateway-max-cost-usd": "0.000000001"}, "x-gateway-max-cost-usd"),
        ({"gateway": {"min_quality": 9.5}}, {}, "x-gateway-min-quality"),
        ({}, {"x-gateway-max-latency-ms": "0.001"}, "x-gateway-max-latency-ms"),
        ({}, {"x-gateway-policy": "nope"}, "x-gateway-policy"),
        ({"response_format": {"type": "json_object"}}, {}, None),
    ],
)
async def test_explicit_model_obeys_constraints_and_capabilities(
    env: Any, body: dict[str, Any], headers: dict[str, str], param: str | None
) -> None:
    rid = uuid.uuid4().hex
    r = post(env, {"model": "cheap", "messages": USER, **body}, headers={**headers, "x-request-id": rid})
    err = await refused(env, r, param)
    assert "cheap" in err["message"] or (param and param in err["message"]), err


def test_explicit_model_within_constraints_is_served(env: Any) -> None:
    r = post(env, {"model": "dear", "messages": USER, "max_tokens": 4}, headers={"x-gateway-min-quality": "8"})
    assert r.status_code == 200 and r.headers["x-gateway-model"] == "dear"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_chat_request_to_an_embedding_model_is_a_400(env: Any, path: str) -> None:
    body = {"model": "emb", "messages": USER} if "chat" in path else {"model": "emb", "prompt": "hi"}
    r = post(env, body, path=path, headers={"x-request-id": uuid.uuid4().hex})
    err = await refused(env, r, "model")
    assert "emb" in err["message"] and "embedding" in err["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/v1/spend"),
        ("GET", "/admin/keys"),
        ("POST", "/admin/route/explain"),
    ],
)
def test_duplicate_authorization_is_a_400_everywhere(env: Any, method: str, path: str) -> None:
    gw, _ = env
    headers = [("authorization", f"Bearer {MASTER}"), ("authorization", "Bearer sk-gw-other")]
    body = {"model": "cheap", "messages": USER} if "embeddings" not in path else {"model": "emb", "input": "x"}
    r = httpx.request(method, gw.base_url + path, json=body if method == "POST" else None, headers=headers, timeout=10)
    assert r.status_code == 400, r.text
    err = assert_openai_error(r.json())
    assert err["param"] == "authorization" and err["code"] == "duplicate_header"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
async def test_a_compressed_body_is_a_415(env: tuple[RunningGateway, LedgerFile], path: str) -> None:
    """gzip's bytes were read as JSON: a 400 about invalid UTF-8. The gateway does not decode request bodies: a
    415 saying so (in the Anthropic shape on /v1/messages), and the request has its ledger row."""
    gw, ledger = env
    raw = gzip.compress(json.dumps({"model": "cheap", "messages": USER, "max_tokens": 5}).encode())
    r = httpx.post(
        gw.base_url + path,
        content=raw,
        timeout=10,
        headers={"authorization": f"Bearer {MASTER}", "content-type": "application/json", "content-encoding": "gzip"},
    )
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert "Content-Encoding 'gzip' is not supported" in error["message"]
    if path == "/v1/messages":
        assert r.json()["type"] == "error" and error["type"] == "invalid_request_error"
    else:
        assert error["code"] == "unsupported_content_encoding" and error["param"] == "content-encoding"
    assert (await ledger.one_row(r.headers["x-request-id"]))["status_code"] == 415


async def test_a_long_id_is_not_echoed_whole(env: tuple[RunningGateway, LedgerFile]) -> None:
    body = {"model": "cheap", "input": "hi", "previous_response_id": "resp_" + "x" * 100_000}
    r = post(env, body, "/v1/responses")
    assert r.status_code == 404 and len(r.text) < 1000, r.text[:200]
