"""A gateway with virtual keys in front of two simulators, its stored responses in Redis, for the front
doors' SDK tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app, get_profile
from tests.hardening.support import LedgerFile
from tests.helpers.redis import any_redis, delete_prefix
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway

MASTER = "master-" + uuid.uuid4().hex

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@dataclass(slots=True)
class Env:
    """The running gateway, its ledger, two virtual keys (two tenants), and the small model's simulator."""

    gw: RunningGateway
    ledger: LedgerFile
    key_a: str
    key_b: str
    sim_url: str

    @property
    def url(self) -> str:
        return self.gw.base_url


def _key(base_url: str, name: str) -> str:
    r = httpx.post(f"{base_url}/admin/keys", json={"name": name}, headers={"authorization": f"Bearer {MASTER}"})
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


@pytest.fixture(scope="package")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("frontdoors")
    old = os.environ.get("GATEWAY_MASTER_KEY")
    os.environ["GATEWAY_MASTER_KEY"] = MASTER
    small = create_simulator_app(get_profile("fast"), model_name="meta/small", seed=1)
    big = create_simulator_app(get_profile("fast"), model_name="gpt-4", seed=2)
    prefix = f"gw:test-resp-{uuid.uuid4().hex[:8]}:"
    try:
        with any_redis() as redis_url, run_asgi_server(small) as a, run_asgi_server(big) as b:
            ledger = LedgerFile(tmp / "ledger.db")
            settings = settings_from_dict(
                {
                    "models": [
                        {
                            "name": "small",
                            "backend": "vllm",
                            "base_url": a + "/v1",
                            "upstream_model": "meta/small",
                            "quality": 6.3,
                            "gpu_hour_usd": 1.0,
                            "tokens_per_second": 1500,
                        },
                        {
                            "name": "big",
                            "backend": "openai",
                            "base_url": b + "/v1",
                            "upstream_model": "gpt-4",
                            "quality": 9.0,
                        },
                    ],
                    "routes": {"auto": {"models": ["small", "big"], "policy": "cost"}},
                    "retry": {"max_attempts": 1},
                    "cache": {"enabled": False},
                    "auth": {"enabled": True},
                    "server": {"metrics_scrape_seconds": 3600},
                    "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
                    "responses": {"redis_url": redis_url, "redis_prefix": prefix, "ttl_seconds": 600},
                }
            )
            try:
                with serve_gateway(settings) as gw:
                    yield Env(gw, ledger, _key(gw.base_url, "alice"), _key(gw.base_url, "bob"), a)
            finally:
                delete_prefix(redis_url, prefix)
    finally:
        if old is None:
            os.environ.pop("GATEWAY_MASTER_KEY", None)
        else:
            os.environ["GATEWAY_MASTER_KEY"] = old
