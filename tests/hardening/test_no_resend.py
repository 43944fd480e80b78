"""A POST is never sent to the same backend again once it may have reached it (issue 20): an upstream that
answered 500, or dropped the connection after the request was written, is not retried; a backend whose
connection was refused (nothing was sent) may be tried again within the retry budget."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config import settings_from_dict
from tests.hardening.gateways import master_key
from tests.hardening.support import LedgerFile
from tests.helpers.ports import free_port
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway

POSTS: list[str] = []


async def failing(request: Request) -> Response:
    POSTS.append((await request.json())["messages"][0]["content"])
    return JSONResponse({"error": {"message": "boom"}}, status_code=500)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, LedgerFile]]:
    tmp: Path = tmp_path_factory.mktemp("resend")
    ledger = LedgerFile(tmp / "l.db")
    app = Starlette(routes=[Route("/v1/chat/completions", failing, methods=["POST"])])
    with master_key(None), run_asgi_server(app) as up:
        settings = settings_from_dict(
            {
                "models": [
                    {"name": "solo", "backend": "openai", "base_url": up + "/v1"},
                    {"name": "gone", "backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
                ],
                "cache": {"enabled": False},
                "retry": {"max_attempts": 3, "backoff_base_ms": 0},
                "breaker": {"failure_threshold": 100},
                "server": {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
            }
        )
        with serve_gateway(settings) as gw:
            yield gw, ledger


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_that_reached_the_backend_is_not_sent_again(
    env: tuple[RunningGateway, LedgerFile], stream: bool
) -> None:
    gw, ledger = env
    text = uuid.uuid4().hex
    body = {"model": "solo", "messages": [{"role": "user", "content": text}], "stream": stream}
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, headers={"x-request-id": text}, timeout=10)
    assert r.status_code == 502
    assert POSTS.count(text) == 1  # before: 3, the retry budget spent resending to the same backend
    assert (await ledger.one_row(text))["attempts"] == 1


async def test_a_refused_connection_may_be_retried(env: tuple[RunningGateway, LedgerFile]) -> None:
    gw, ledger = env
    rid = uuid.uuid4().hex
    body = {"model": "gone", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, headers={"x-request-id": rid}, timeout=10)
    assert r.status_code == 502
    assert (await ledger.one_row(rid))["attempts"] == 3  # nothing was sent: trying again is safe
