"""Routing over real sockets with simulated backends of different speeds and prices."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app, get_profile
from tests.helpers.servers import run_asgi_server, start_simulator_process

USER = [{"role": "user", "content": "Tell me a short story."}]


def gateway_settings(models: list[dict[str, Any]], tmp: Path, **extra: Any) -> Any:
    return settings_from_dict(
        {
            "models": models,
            "cache": {"enabled": False},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp}/ledger.db"},
            "server": {"metrics_scrape_seconds": 0.05},
            **extra,
        }
    )


@pytest.fixture
def two_speeds(tmp_path: Path) -> Iterator[str]:
    fast = create_simulator_app(get_profile("llama-2-7b"), time_scale=0.05, max_concurrency=2, seed=1)
    slow = create_simulator_app(get_profile("llama-2-13b"), time_scale=0.05, max_concurrency=16, seed=2)
    with run_asgi_server(fast) as f, run_asgi_server(slow) as s:
        settings = gateway_settings(
            [
                {
                    "name": "llama-2-7b",
                    "backend": "vllm",
                    "base_url": f + "/v1",
                    "upstream_model": "meta-llama/Llama-2-7b-chat-hf",
                    "max_in_flight": 2,
                    "gpu_hour_usd": 1,
                },
                {
                    "name": "llama-2-13b",
                    "backend": "vllm",
                    "base_url": s + "/v1",
                    "upstream_model": "meta-llama/Llama-2-13b-chat-hf",
                    "max_in_flight": 16,
                    "gpu_hour_usd": 1.8,
                },
            ],
            tmp_path,
            routes={"fast": {"policy": "latency"}},
        )
        with run_asgi_server(create_app(settings)) as url:
            yield url


async def test_latency_policy_prefers_fast_backend_and_spills_over_under_load(two_speeds: str) -> None:
    body = {"model": "fast", "messages": USER, "max_tokens": 16}
    async with httpx.AsyncClient(base_url=two_speeds, timeout=30) as client:
        # idle: learn speeds, then every request goes to the fast model
        sequential = Counter()
        for _ in range(12):
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
            sequential[r.headers["x-gateway-model"]] += 1
        assert sequential["llama-2-7b"] >= 10, sequential
        # 24 at once: the fast model's queue fills (2 slots) and traffic moves to the 13B
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(24)))
    assert all(r.status_code == 200 for r in responses)
    loaded = Counter(r.headers["x-gateway-model"] for r in responses)
    assert loaded["llama-2-13b"] >= 8, loaded
    assert loaded["llama-2-7b"] >= 2, loaded
    spilled = [r.headers["x-gateway-reason"] for r in responses if r.headers["x-gateway-model"] == "llama-2-13b"]
    assert any("spilled over" in reason or "fastest" in reason for reason in spilled)


async def test_killed_backend_trips_breaker_with_no_failed_request(tmp_path: Path) -> None:
    cheap = start_simulator_process("fast", model_name="cheap", seed=1)
    pricey = start_simulator_process("fast", model_name="pricey", seed=2)
    try:
        settings = gateway_settings(
            [
                {
                    # an openai-kind backend has no /metrics scrape: the breaker alone keeps it out
                    "name": "cheap",
                    "backend": "openai",
                    "base_url": cheap.base_url + "/v1",
                    "upstream_model": "cheap",
                    "input_cost_per_token": 0.0000001,
                    "output_cost_per_token": 0.0000002,
                    "quality": 9,
                },
                {
                    "name": "pricey",
                    "backend": "openai",
                    "base_url": pricey.base_url + "/v1",
                    "upstream_model": "pricey",
                    "input_cost_per_token": 0.00003,
                    "output_cost_per_token": 0.00006,
                    "quality": 9,
                },
            ],
            tmp_path,
            routes={"auto": {"policy": "cost"}},
            breaker={"failure_threshold": 2, "reset_seconds": 60},
            retry={"max_attempts": 2, "backoff_base_ms": 1},
        )
        with run_asgi_server(create_app(settings)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                body = {"model": "auto", "messages": USER, "max_tokens": 4}
                first = await client.post("/v1/chat/completions", json=body)
                assert first.headers["x-gateway-model"] == "cheap"
                cheap.kill()
                served = []
                for _ in range(10):
                    r = await client.post("/v1/chat/completions", json=body)
                    assert r.status_code == 200, r.text
                    served.append(r.headers["x-gateway-model"])
                metrics = (await client.get("/metrics")).text
                ready = await client.get("/ready")
        assert served == ["pricey"] * 10
        assert 'gateway_backend_breaker_open{model="cheap"} 1.0' in metrics
        # the breaker opened after two failures: later requests did not try the dead backend
        assert 'gateway_fallbacks_total{model="cheap"} 2.0' in metrics
        assert ready.status_code == 200  # "pricey" is up; detail is for the master key only
    finally:
        cheap.stop()
        pricey.stop()
