"""Enforcement does not trust the reserve alone (issue 20): an upstream that ignores ``max_tokens`` cannot make a
key overspend. A stream is cut off with a final SSE error event once its running cost passes what the request
reserved; a complete answer that cost more is a 402 (charged, not sent). Both are in the ledger, to the token."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.config import settings_from_dict
from tests.hardening.gateways import master_key
from tests.hardening.support import LedgerFile, sse_events
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway

MASTER = "sk-master-" + uuid.uuid4().hex
OUT_PRICE = Decimal("0.00003")
CHUNKS = 400  # far more than any max_tokens the test sends


async def greedy(request: Request) -> Response:
    """Answers 400 tokens whatever max_tokens says."""
    body = await request.json()
    usage = {"prompt_tokens": 10, "completion_tokens": CHUNKS, "total_tokens": 10 + CHUNKS}
    if not body.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": "w " * CHUNKS}, "finish_reason": "stop"}
        return JSONResponse(
            {"id": "x", "object": "chat.completion", "created": 1, "model": "u", "choices": [choice], "usage": usage}
        )

    async def events() -> AsyncIterator[bytes]:
        for _ in range(CHUNKS):
            chunk = {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "u",
                "choices": [{"index": 0, "delta": {"content": "w "}, "finish_reason": None}],
            }
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        last = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "u", "choices": [], "usage": usage}
        yield b"data: " + orjson.dumps(last) + b"\n\ndata: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, LedgerFile]]:
    ledger = LedgerFile(tmp_path_factory.mktemp("cut") / "l.db")
    app = Starlette(routes=[Route("/v1/chat/completions", greedy, methods=["POST"])])
    with master_key(MASTER), run_asgi_server(app) as up:
        model = {
            "name": "greedy",
            "backend": "openai",
            "base_url": up + "/v1",
            "upstream_model": "u",
            "input_cost_per_token": "0.00001",
            "output_cost_per_token": str(OUT_PRICE),
        }
        settings = settings_from_dict(
            {
                "models": [model],
                "cache": {"enabled": False},
                "server": {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
            }
        )
        with serve_gateway(settings) as gw:
            yield gw, ledger


def new_key(gw: RunningGateway, budget: str) -> dict[str, Any]:
    r = httpx.post(
        gw.base_url + "/admin/keys",
        json={"name": "k", "budget_usd": budget},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    made: dict[str, Any] = r.json()
    return made


async def test_a_stream_past_its_reserve_is_cut_with_an_error_event(env: tuple[RunningGateway, LedgerFile]) -> None:
    gw, ledger = env
    key = new_key(gw, "1.00")
    rid = uuid.uuid4().hex
    body = {"model": "greedy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": True}
    headers = {"authorization": f"Bearer {key['key']}", "x-request-id": rid}
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert isinstance(events[-1], dict) and events[-1]["error"]["code"] == "budget_exceeded_mid_stream", events[-1]
    sent = sum(1 for e in events if isinstance(e, dict) and e.get("choices"))
    assert sent < 30, sent  # before: all 400 chunks were relayed
    row = await ledger.one_row(rid)
    assert sent <= row["completion_tokens"] <= sent + 4  # the streamed text, counted by the tokenizer
    reserve = Decimal("0.00001") * 16 + OUT_PRICE * 10  # what admission reserved, about
    assert Decimal(row["cost_usd"]).scaleb(-12) <= reserve * 2, row["cost_usd"]  # SQLite keeps 1e-12 USD units


async def test_an_answer_past_its_reserve_is_a_402_and_charged(env: tuple[RunningGateway, LedgerFile]) -> None:
    gw, ledger = env
    key = new_key(gw, "1.00")
    rid = uuid.uuid4().hex
    body = {"model": "greedy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    headers = {"authorization": f"Bearer {key['key']}", "x-request-id": rid}
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded_by_answer", r.text
    row = await ledger.one_row(rid)
    assert row["status_code"] == 402 and row["completion_tokens"] == CHUNKS  # what the upstream billed
