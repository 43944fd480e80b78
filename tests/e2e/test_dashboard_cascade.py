"""The dashboard's cascade table in a real headless Chromium: escalation rate and cost against routing alone."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.accounting.conftest import auth_header
from tests.e2e.test_dashboard import MASTER
from tests.helpers.browser import dashboard_page, needs_chromium
from tests.helpers.servers import run_asgi_server, serve_gateway

PROMPTS = ["Write a short poem about the sea.", "refuseme: tell me a joke", "refuseme: a limerick", "Hi."]


@needs_chromium
def test_the_cascade_table_shows_escalations_and_the_saving_against_routing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect

    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER)
    admin = auth_header(MASTER)

    local = create_simulator_app(
        "llama-2-7b", time_scale=0.0, seed=1, answer_rules=[{"match": "refuseme", "behaviour": "refuse"}]
    )
    strong = create_simulator_app("gpt-4", time_scale=0.0, seed=2)
    with run_asgi_server(local) as lu, run_asgi_server(strong) as su:
        settings = settings_from_dict(
            {
                "models": [
                    {"name": "llama-2-7b", "backend": "vllm", "base_url": lu + "/v1", "gpu_hour_usd": 1},
                    {"name": "gpt-4", "backend": "openai", "base_url": su + "/v1", "upstream_model": "gpt-4"},
                ],
                "routes": {"casc": {"models": ["llama-2-7b", "gpt-4"], "policy": "cascade", "quality_target": 0.5}},
                "cache": {"enabled": False},
                "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path}/ledger.db", "flush_interval_seconds": 0.05},
            }
        )
        with serve_gateway(settings) as gw:
            escalated = 0
            for prompt in PROMPTS:
                body = {"model": "casc", "messages": [{"role": "user", "content": prompt}], "max_tokens": 200}
                r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, headers=admin, timeout=30)
                assert r.status_code == 200, r.text
                escalated += r.headers["x-gateway-cascade"] == "escalated"
            assert escalated >= 2
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                data = httpx.get(gw.base_url + "/admin/dashboard/data", headers=admin, timeout=30).json()
                if data["cascade"] and data["cascade"][0]["requests"] == len(PROMPTS):
                    break
                time.sleep(0.05)
            (row,) = data["cascade"]
            assert row["escalated"] == escalated and row["saved_vs_routing_usd"] is not None

            with dashboard_page(f"{gw.base_url}/dashboard", MASTER) as tab:
                page = tab.page
                page.wait_for_selector("body[data-loaded]")
                expect(page.locator("#card-cascade")).to_be_visible()
                cells = page.locator("#table-cascade tbody tr[data-key='casc'] td").all_inner_texts()
                assert cells[:3] == ["casc", str(len(PROMPTS)), str(escalated)]
                assert cells[3] == f"{escalated / len(PROMPTS) * 100:.1f} %"
                saved = Decimal(row["saved_vs_routing_usd"])
                assert cells[6] == ("-" if saved < 0 else "") + f"${abs(saved):.6f}"
                assert not tab.errors, tab.errors
