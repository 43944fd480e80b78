"""docs/accounting.md: an embeddings request's baseline is "the embedding model it asked for"; after a fallback to a
cheaper embedding model, the saving is the asked model's price minus what was paid."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.helpers.servers import run_asgi_server, serve_gateway
from tests.helpers.upstream import refused_url

MASTER = "master-embeddings-fallback"


def test_embeddings_fallback_baseline_is_the_asked_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER)
    db = tmp_path / "ledger.db"
    with run_asgi_server(create_simulator_app("fast", model_name="sim")) as sim:
        config = {
            "models": [
                {
                    "name": "emb",
                    "backend": "openai",
                    "base_url": sim + "/v1",
                    "upstream_model": "sim",
                    "mode": "embedding",
                    "input_cost_per_token": "0.0000001",
                },
                {
                    "name": "emb-dear",
                    "backend": "openai",
                    "base_url": refused_url() + "/v1",
                    "upstream_model": "sim",
                    "mode": "embedding",
                    "input_cost_per_token": "0.000001",
                    "fallbacks": ["emb"],
                },
            ],
            "retry": {"max_attempts": 2, "backoff_base_ms": 0},
            "cache": {"enabled": False},
            "server": {"metrics_scrape_seconds": 3600},
            "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval_seconds": 0.05},
        }
        with serve_gateway(settings_from_dict(config)) as gw:
            r = httpx.post(
                gw.base_url + "/v1/embeddings",
                headers={"authorization": f"Bearer {MASTER}"},
                json={"model": "emb-dear", "input": "hello world foo"},
                timeout=30,
            )
            assert r.status_code == 200
    con = sqlite3.connect(db)
    chosen, prompt, cost, baseline, saved = con.execute(
        "SELECT chosen_model, prompt_tokens, cost_usd, baseline_cost_usd, saved_usd FROM gw_ledger"
    ).fetchone()
    units = lambda v: Decimal(v).scaleb(-12)  # noqa: E731 - SQLite money: integer 1e-12 USD
    assert chosen == "emb" and prompt > 0
    assert units(cost) == Decimal("0.0000001") * prompt
    assert units(baseline) == Decimal("0.000001") * prompt  # the model it asked for
    assert units(saved) == units(baseline) - units(cost)
