"""A cascade route pays for every answer it escalates past (and its judge): the reserve taken before the request
runs is that whole ladder, and the caps a request is held to count what it already paid. Before, a key with a
$0.003 budget spent $0.00384 on one escalated request (its reserve was one rung's answer)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.hardening.gateways import budget_key, master_key
from tests.hardening.support import LedgerFile
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway

MASTER = "sk-master-" + uuid.uuid4().hex
PRICE = {"input_cost_per_token": "0.00001", "output_cost_per_token": "0.00003"}
ESCALATES = [{"match": "unsure", "behaviour": "low_confidence"}]  # the local rung's answer fails its check
BODY = {"model": "casc", "messages": [{"role": "user", "content": "I am unsure, explain"}], "max_tokens": 60}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, LedgerFile]]:
    ledger = LedgerFile(tmp_path_factory.mktemp("casc") / "l.db")
    local = create_simulator_app("llama-2-7b", time_scale=0.0, seed=1, answer_rules=ESCALATES)
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    with master_key(MASTER), run_asgi_server(local) as lu, run_asgi_server(strong) as su:
        models = [
            {"name": "a", "backend": "vllm", "base_url": lu + "/v1", "upstream_model": "meta-llama/Llama-2-7b-chat-hf"},
            {"name": "b", "backend": "openai", "base_url": su + "/v1", "upstream_model": "gpt-4"},
        ]
        settings = settings_from_dict(
            {
                "models": [{**m, **PRICE} for m in models],
                "routes": {"casc": {"models": ["a", "b"], "policy": "cascade", "quality_target": 0.5}},
                "cache": {"enabled": False},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
                "server": {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600},
            }
        )
        with serve_gateway(settings) as gw:
            yield gw, ledger


async def spend(gw: RunningGateway, key: str) -> Decimal:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=10) as http:
        for _ in range(100):  # the ledger is written in the background
            totals: dict[str, Any] = (await http.get("/v1/spend", headers={"authorization": f"Bearer {key}"})).json()
            await asyncio.sleep(0.1)
            again = (await http.get("/v1/spend", headers={"authorization": f"Bearer {key}"})).json()
            if again == totals:
                return Decimal(str(totals["totals"]["cost_usd"]))
    raise AssertionError("spend never settled")


async def test_the_reserve_covers_every_rung(env: tuple[RunningGateway, LedgerFile]) -> None:
    gw, _ = env
    key = budget_key(gw, MASTER, "0.003")  # one rung's answer fits (~$0.0021), the ladder (~$0.0042) does not
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 402, r.text
    assert "may cost up to $0.0042" in r.json()["error"]["message"], r.text
    assert await spend(gw, key) == 0


async def test_escalated_requests_keep_a_key_within_its_budget(env: tuple[RunningGateway, LedgerFile]) -> None:
    gw, ledger = env
    budget = Decimal("0.01")
    key = budget_key(gw, MASTER, str(budget))
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http:
        rids = [uuid.uuid4().hex for _ in range(6)]
        replies = await asyncio.gather(
            *(
                http.post(
                    "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}", "x-request-id": rid}
                )
                for rid in rids
            )
        )
    served = [r for r in replies if r.status_code == 200]
    assert served and all(r.headers["x-gateway-cascade"] == "escalated" for r in served)
    assert all(r.status_code in (200, 402) for r in replies), [r.text for r in replies]
    spent = await spend(gw, key)
    assert Decimal(served[0].headers["x-gateway-cost-usd"]) > Decimal("0.003")  # both rungs were paid
    assert spent <= budget, spent
    row = await ledger.one_row(served[0].headers["x-request-id"])
    assert row["cascade"] == "escalated"


async def test_a_key_s_tpm_counts_every_rung_it_paid_for(env: tuple[RunningGateway, LedgerFile]) -> None:
    """A key's tokens a minute counted the served answer only: escalated answers and judge calls were read and
    generated upstream all the same (a 1,200-a-minute key got ~2.9x that through a 3-rung route). The settle now
    counts every paid rung (the admission still asks for room for the largest rung: the whole ladder's worst case
    refused modest keys' ordinary requests)."""
    gw, _ = env
    r = httpx.post(
        gw.base_url + "/admin/keys", json={"name": "t", "tpm": 220}, headers={"authorization": f"Bearer {MASTER}"}
    )
    key = r.json()["key"]
    auth = {"authorization": f"Bearer {key}"}
    first = httpx.post(gw.base_url + "/v1/chat/completions", json=BODY, headers=auth, timeout=30)
    assert first.status_code == 200 and first.headers["x-gateway-cascade"] == "escalated", first.text
    second = httpx.post(gw.base_url + "/v1/chat/completions", json=BODY, headers=auth, timeout=30)
    assert second.status_code == 429, second.text  # ~150 of the 220 went to the two rungs of the first: ~96 needed
