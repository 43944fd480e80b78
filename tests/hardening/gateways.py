"""A gateway in front of the loopback simulator, for the round-two hardening tests (issue 20)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.hardening.support import LedgerFile
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway


def sim_models(sim: str) -> list[dict[str, Any]]:
    """Two chat models (cheap and dear) and an embedding model, all served by the simulator at ``sim``."""
    return [
        {
            "name": "cheap",
            "backend": "openai",
            "base_url": sim + "/v1",
            "upstream_model": "sim",
            "quality": 5,
            "input_cost_per_token": "0.000001",
            "output_cost_per_token": "0.000002",
        },
        {
            "name": "dear",
            "backend": "openai",
            "base_url": sim + "/v1",
            "upstream_model": "sim",
            "quality": 9,
            "input_cost_per_token": "0.00001",
            "output_cost_per_token": "0.00003",
        },
        {"name": "emb", "backend": "openai", "base_url": sim + "/v1", "upstream_model": "sim", "mode": "embedding"},
    ]


@contextmanager
def master_key(value: str | None) -> Iterator[None]:
    """``GATEWAY_MASTER_KEY`` set to ``value`` (None: unset) for the block."""
    old = os.environ.get("GATEWAY_MASTER_KEY")
    if value is None:
        os.environ.pop("GATEWAY_MASTER_KEY", None)
    else:
        os.environ["GATEWAY_MASTER_KEY"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GATEWAY_MASTER_KEY", None)
        else:
            os.environ["GATEWAY_MASTER_KEY"] = old


@contextmanager
def sim_gateway(
    tmp: Path, overrides: dict[str, Any] | None = None, chat_model: dict[str, Any] | None = None, **uvicorn: Any
) -> Iterator[RunningGateway]:
    """The gateway over the simulator, a SQLite ledger in ``tmp``; ``overrides`` are merged into the config
    (top-level keys replaced, ``server``/``cache``/``auth`` merged), ``chat_model`` into each chat model."""
    with run_asgi_server(create_simulator_app("fast", model_name="sim")) as sim:
        models = [m if m.get("mode") == "embedding" else {**m, **(chat_model or {})} for m in sim_models(sim)]
        config: dict[str, Any] = {
            "models": models,
            "cache": {"enabled": False},
            "server": {"metrics_scrape_seconds": 3600},
            "ledger": {"url": LedgerFile(tmp / "ledger.db").url, "flush_interval_seconds": 0.05},
        }
        for key, value in (overrides or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        with serve_gateway(settings_from_dict(config), **uvicorn) as gw:
            yield gw


def budget_key(gw: RunningGateway, master: str, budget: str) -> str:
    """A new virtual key's secret, with a ``budget`` (USD), made through ``gw``'s admin API."""
    r = httpx.post(
        gw.base_url + "/admin/keys",
        json={"name": "k", "budget_usd": budget},
        headers={"authorization": f"Bearer {master}"},
    )
    key: str = r.json()["key"]
    return key
