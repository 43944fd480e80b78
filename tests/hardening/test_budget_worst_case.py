"""Budgets hold under concurrency (issue 20): the reserve covers prompts x n x the output limit (the model's
when ``max_tokens`` is absent), and ``n`` and the prompt-list length have configurable limits. The probe's
case, over real sockets: a $0.05 key, 30 concurrent ``/v1/completions`` with a list of prompts and no
``max_tokens``; before, $1.22 was spent (24x the budget)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.hardening.gateways import master_key, sim_gateway
from tests.hardening.support import assert_openai_error

MASTER = "sk-master-" + uuid.uuid4().hex
BUDGET = Decimal("0.05")


def spent(ledger: Path, key_id: str) -> tuple[Decimal, int]:
    """The key's spend in the ledger (SQLite keeps 1e-12 USD units) and its number of served requests."""
    with sqlite3.connect(ledger) as conn:
        rows = conn.execute("SELECT cost_usd, status_code FROM gw_ledger WHERE key_id = ?", (key_id,)).fetchall()
    total = sum((Decimal(r[0]).scaleb(-12) for r in rows), Decimal(0))
    return total, sum(1 for r in rows if r[1] == 200)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_concurrent_prompt_lists_never_overspend(tmp_path: Path, stream: bool) -> None:
    overrides = {"server": {"max_prompts": 32, "max_n": 4}}
    # the model's output limit bounds the reserve when max_tokens is absent (10 x 64 x $0.00003: ~$0.02 each)
    with master_key(MASTER), sim_gateway(tmp_path, overrides, chat_model={"max_output_tokens": 64}) as gw:
        spec = gw.gateway.settings.model("dear")
        assert spec is not None
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as c:
            admin = {"authorization": f"Bearer {MASTER}"}
            made = (await c.post("/admin/keys", json={"name": "b", "budget_usd": str(BUDGET)}, headers=admin)).json()
            key = {"authorization": f"Bearer {made['key']}"}
            body = {"model": "dear", "prompt": [f"Tell me a story about {i}." for i in range(10)], "stream": stream}
            results = await asyncio.gather(*(c.post("/v1/completions", json=body, headers=key) for _ in range(30)))
            for r in results:
                assert r.status_code in (200, 402), r.text
            assert any(r.status_code == 402 for r in results)
            assert sum(1 for r in results if r.status_code == 200) >= 1
            await asyncio.sleep(0.5)  # the ledger writer flushes every 50 ms
            total, served = spent(tmp_path / "ledger.db", made["id"])
        assert served == sum(1 for r in results if r.status_code == 200)
        assert 0 < total <= BUDGET, f"spent ${total} of a ${BUDGET} budget"


async def test_fan_out_limits_are_400s(tmp_path: Path) -> None:
    with master_key(None), sim_gateway(tmp_path, {"server": {"max_prompts": 32, "max_n": 4}}) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as c:
            r = await c.post("/v1/completions", json={"model": "cheap", "prompt": ["x"] * 1000, "n": 1})
            assert r.status_code == 400 and assert_openai_error(r.json())["param"] == "prompt", r.text
            r = await c.post("/v1/completions", json={"model": "cheap", "prompt": "x", "n": 128})
            assert r.status_code == 400 and assert_openai_error(r.json())["param"] == "n", r.text
            r = await c.post("/v1/completions", json={"model": "cheap", "prompt": "x", "best_of": 8})
            assert r.status_code == 400 and assert_openai_error(r.json())["param"] == "best_of", r.text
            r = await c.post(
                "/v1/chat/completions", json={"model": "cheap", "messages": [{"role": "user", "content": "x"}], "n": 5}
            )
            assert r.status_code == 400 and "at most 4" in r.json()["error"]["message"]
            ok = await c.post("/v1/completions", json={"model": "cheap", "prompt": ["a", "b"], "n": 2, "max_tokens": 3})
            assert ok.status_code == 200, ok.text
