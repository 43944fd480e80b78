"""Upstream failures reach clients as 502/503/504 naming the model, never its address, errno or file paths;
upstream error bodies are cut to their OpenAI fields and scrubbed; the details go to the log; ``/ready``
answers from the background checks and the breakers (no probe per call), with detail for the master key only.
All over real sockets (issue 20)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.config import settings_from_dict
from tests.hardening.gateways import master_key
from tests.hardening.support import LedgerFile, assert_openai_error
from tests.helpers.ports import free_port
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway

MASTER = "sk-master-" + uuid.uuid4().hex
AUTH = {"authorization": f"Bearer {MASTER}"}  # a master key turns auth on
LEAKS = re.compile(r"/srv/|/home/|\.py\b|\d+\.\d+\.\d+\.\d+|:\d{2,5}\b|errno|Connect call failed", re.IGNORECASE)


@dataclass(slots=True)
class Upstream:
    url: str
    model_gets: list[str]


def upstream_app(model_gets: list[str]) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.json()
        text = body["messages"][-1]["content"]
        if text == "boom":
            err = {
                "message": "engine failed: File /srv/vllm/engine/llm_engine.py line 42: CUDA OOM on 10.1.2.3:8000",
                "type": "InternalServerError",
                "code": 500,
                "internal_trace": "x" * 50,
            }
            return JSONResponse({"error": err, "debug": {"host": "gpu-7.internal:8001"}}, status_code=500)
        if text == "busy":
            return JSONResponse({"error": {"message": "overloaded at gpu-7.internal:8001"}}, status_code=503)
        if text == "html":
            return PlainTextResponse("<html>nginx at /etc/nginx/nginx.conf 10.0.0.9:80</html>", status_code=502)
        if text == "bad":
            err = {"message": "max_tokens too large; see /home/ops/limits.yaml", "type": "invalid_request_error"}
            return JSONResponse({"error": {**err, "param": "max_tokens", "code": "bad"}}, status_code=400)
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        return JSONResponse(
            {"id": "x", "object": "chat.completion", "created": 1, "model": "u", "choices": [choice], "usage": usage}
        )

    async def models(request: Request) -> Response:
        model_gets.append(request.url.path)
        return JSONResponse({"object": "list", "data": []})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gets: list[str] = []
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with master_key(MASTER), run_asgi_server(upstream_app(gets)) as up:
        settings = settings_from_dict(
            {
                "models": [
                    {"name": "flaky", "backend": "openai", "base_url": up + "/v1", "upstream_model": "u"},
                    {"name": "gone", "backend": "openai", "base_url": dead, "upstream_model": "u"},
                ],
                "cache": {"enabled": False},
                "retry": {"max_attempts": 1},
                "breaker": {"failure_threshold": 100},
                "server": {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600},
                "ledger": {"url": LedgerFile(tmp_path_factory.mktemp("errs") / "l.db").url},
            }
        )
        with serve_gateway(settings) as running:
            running.app.state.model_gets = gets
            yield running


def chat(gw: RunningGateway, model: str, text: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return httpx.post(gw.base_url + "/v1/chat/completions", json=body, timeout=10, headers=AUTH)


@pytest.mark.parametrize(("text", "status", "upstream"), [("boom", 502, 500), ("busy", 503, 503), ("html", 502, 502)])
def test_upstream_5xx_is_a_scrubbed_502_503_naming_the_model(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture, text: str, status: int, upstream: int
) -> None:
    r = chat(gw, "flaky", text)
    assert r.status_code == status, r.text
    err = assert_openai_error(r.json())  # exactly the four OpenAI fields: "debug"/"internal_trace" dropped
    assert "'flaky'" in err["message"] and err["type"] == "upstream_error", err
    assert not LEAKS.search(r.text), r.text
    assert any("flaky" in rec.getMessage() and f"HTTP {upstream}" in rec.getMessage() for rec in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    if text == "boom":  # the detail is in the log, for the operator
        assert any("/srv/vllm/engine" in rec.getMessage() for rec in caplog.records)


def test_upstream_4xx_keeps_its_fields_scrubbed(gw: RunningGateway) -> None:
    r = chat(gw, "flaky", "bad")
    assert r.status_code == 400
    err = assert_openai_error(r.json())
    assert err["param"] == "max_tokens" and err["code"] == "bad" and "max_tokens too large" in err["message"]
    assert "/home/ops" not in r.text


def test_unreachable_upstream_names_the_model_not_its_address(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for stream in (False, True):
        body = {"model": "gone", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, timeout=10, headers=AUTH)
        assert r.status_code == 502, r.text
        err = assert_openai_error(r.json())
        assert "'gone'" in err["message"] and not LEAKS.search(r.text), r.text
    assert any("gone" in rec.getMessage() and "Connect" in rec.getMessage() for rec in caplog.records)


def test_ready_is_terse_without_the_master_key_and_probes_nothing_per_call(gw: RunningGateway) -> None:
    gets: list[str] = gw.app.state.model_gets
    with httpx.Client(base_url=gw.base_url, timeout=10) as c:
        first = c.get("/ready")
        before = len(gets)
        for _ in range(20):
            r = c.get("/ready")
            assert r.status_code == 200 and r.json() == {"status": "ready"}, r.text
        assert len(gets) == before  # answered from state: no upstream probe per call
        assert first.json() == {"status": "ready"}
        full = c.get("/ready", headers={"authorization": f"Bearer {MASTER}"}).json()
        assert full["backends"]["flaky"]["ready"] is True
        assert full["backends"]["gone"]["ready"] is False and full["backends"]["gone"]["error"]
        assert c.get("/ready", headers={"authorization": "Bearer nope"}).json() == {"status": "ready"}
