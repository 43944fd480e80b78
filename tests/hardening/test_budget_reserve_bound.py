"""The budget's reserve is a worst case only if it bounds the prompt the upstream bills. It is computed from the
body's bytes (``bound_from_json``: ~3 bytes a token), which does not bound two kinds of prompt a client controls:

* image parts: a ~30-byte URL is billed hundreds of tokens (765 for a 1024x1024 image at high detail on gpt-4o),
  tens of thousands on gpt-4o-mini (25,501 for the same image);
* token-id prompts (``prompt: [0, 0, ...]``): 2 bytes of JSON per billed token.

Admitted on a small reserve, such requests are charged (``budget_exceeded_by_answer``: not sent, but the upstream
billed it) far past the key's budget. Over real sockets, through an upstream that bills what the gateway counts."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.config import settings_from_dict
from tests.hardening.gateways import master_key
from tests.hardening.support import LedgerFile
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway

MASTER = "sk-master-" + uuid.uuid4().hex
GPT_4O_IMAGE = 765  # what gpt-4o bills a 1024x1024 image at high detail
GPT_4O_MINI_IMAGE = 2_833 + 4 * 5_667  # what gpt-4o-mini bills for it: 25,501
#: a model priced like gpt-4 (the default), and gpt-4o-mini at its own prices
PRICED: dict[str, str] = {"input_cost_per_token": "0.00001", "output_cost_per_token": "0.00003"}
MINI: dict[str, str] = {"input_cost_per_token": "0.00000015", "output_cost_per_token": "0.0000006"}


def _billing_upstream(image_tokens: int) -> Starlette:
    """Bills ``image_tokens`` an image part and one token a prompt token id."""

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        images = sum(
            1
            for m in body["messages"]
            if isinstance(m.get("content"), list)
            for p in m["content"]
            if p.get("type") == "image_url"
        )
        prompt, completion = 10 + image_tokens * images, 5
        return JSONResponse(
            {
                "id": "c", "object": "chat.completion", "created": 1, "model": "u",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            }
        )  # fmt: skip

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        prompt = len(body["prompt"]) if isinstance(body["prompt"], list) else 10
        return JSONResponse(
            {
                "id": "c", "object": "text_completion", "created": 1, "model": "u",
                "choices": [{"index": 0, "text": "x", "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1},
            }
        )  # fmt: skip

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )


@contextmanager
def _gateway(tmp: Path, image_tokens: int, model: dict[str, Any]) -> Iterator[tuple[RunningGateway, LedgerFile]]:
    ledger = LedgerFile(tmp / "ledger.db")
    with master_key(MASTER), run_asgi_server(_billing_upstream(image_tokens)) as up:
        settings = settings_from_dict(
            {
                "models": [
                    {
                        "name": "m",
                        "backend": "openai",
                        "base_url": up + "/v1",
                        "upstream_model": "u",
                        "supports_vision": True,
                        "context_window": 128000,
                        **model,
                    }
                ],
                "retry": {"max_attempts": 1},
                "cache": {"enabled": False},
                "auth": {"enabled": True},
                "server": {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
            }
        )
        with serve_gateway(settings) as gw:
            yield gw, ledger


def _spent(ledger: LedgerFile, key_id: str) -> Decimal:
    with sqlite3.connect(ledger.path) as conn:
        rows = conn.execute("SELECT cost_usd FROM gw_ledger WHERE key_id = ?", (key_id,)).fetchall()
    return sum((Decimal(r[0]).scaleb(-12) for r in rows), Decimal(0))  # SQLite keeps 1e-12 USD units


async def _overspend(
    tmp: Path,
    budget: str,
    path: str,
    body: dict[str, Any],
    concurrent: int,
    image_tokens: int = GPT_4O_IMAGE,
    model: dict[str, Any] = PRICED,
) -> tuple[Decimal, list[tuple[int, str | None]]]:
    with _gateway(tmp, image_tokens, model) as (gw, ledger):
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as c:
            admin = {"authorization": f"Bearer {MASTER}"}
            made = (await c.post("/admin/keys", json={"name": "b", "budget_usd": budget}, headers=admin)).json()
            key = {"authorization": f"Bearer {made['key']}"}
            results = await asyncio.gather(*(c.post(path, json=body, headers=key) for _ in range(concurrent)))
            await asyncio.sleep(0.5)  # the ledger writer flushes every 50 ms
            return _spent(ledger, made["id"]), [(r.status_code, r.json().get("error", {}).get("code")) for r in results]


_URLS = [f"https://example.com/{i}.png" for i in range(60)]
_IMAGE_REQUESTS = {
    "chat": (
        "/v1/chat/completions",
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi"}]
                    + [{"type": "image_url", "image_url": {"url": u}} for u in _URLS],
                }
            ],
        },
    ),
    "responses": (
        "/v1/responses",
        {
            "model": "m",
            "max_output_tokens": 16,
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}]
                    + [{"type": "input_image", "image_url": u} for u in _URLS],
                }
            ],
        },
    ),
    "messages": (
        "/v1/messages",
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi"}]
                    + [{"type": "image", "source": {"type": "url", "url": u}} for u in _URLS],
                }
            ],
        },
    ),
}


@pytest.mark.parametrize("door", list(_IMAGE_REQUESTS))
async def test_image_urls_cannot_spend_past_the_budget(tmp_path: Path, door: str) -> None:
    path, body = _IMAGE_REQUESTS[door]
    spent, results = await _overspend(tmp_path, "0.05", path, body, concurrent=4)
    assert spent <= Decimal("0.05"), f"spent ${spent} of a $0.05 budget: {results}"  # was $1.37775 (chat)
    assert {status for status, _ in results} == {402}, results  # the reserve alone passes the budget


async def test_token_id_prompts_cannot_spend_past_the_budget(tmp_path: Path) -> None:
    body = {"model": "m", "max_tokens": 1, "prompt": [0] * 100_000}  # 100,000 billed tokens in 200 KB of JSON
    spent, results = await _overspend(tmp_path, "2.05", "/v1/completions", body, concurrent=4)
    # before the fix: each reserved ~$0.667 and was charged ~$1.00: three admitted, $3.00 spent
    assert spent <= Decimal("2.05"), f"spent ${spent} of a $2.05 budget: {results}"


async def test_gpt_4o_mini_images_cannot_spend_past_the_budget(tmp_path: Path) -> None:
    # 1,600 tokens an image (the first fix) bounded gpt-4o's images, not gpt-4o-mini's: $0.69 of a $0.05 budget
    path, body = _IMAGE_REQUESTS["chat"]
    spent, results = await _overspend(tmp_path, "0.05", path, body, 4, image_tokens=GPT_4O_MINI_IMAGE, model=MINI)
    assert spent <= Decimal("0.05"), f"spent ${spent} of a $0.05 budget: {results}"


async def test_a_models_own_image_bound_lets_a_small_budget_send_images(tmp_path: Path) -> None:
    two_images = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}} for u in _URLS[:2]]}],
    }
    path = "/v1/chat/completions"
    _, refused = await _overspend(tmp_path / "a", "0.05", path, two_images, 1)
    assert refused == [(402, "budget_exceeded")]  # 2 x 48,169 tokens at $10 a million: $0.96 reserved
    own_bound = {**PRICED, "max_image_tokens": 1_445}  # gpt-4o's most, as the operator knows it
    spent, served = await _overspend(tmp_path / "b", "0.05", path, two_images, 1, model=own_bound)
    assert served == [(200, None)] and spent == Decimal("0.01555")  # (10 + 2 x 765) x $0.00001 + 5 x $0.00003
