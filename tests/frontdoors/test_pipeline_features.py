"""The front doors get what chat gets: the response cache (exact hits, replayed as a stream) and fallbacks\n(from a backend that is up but answers 500)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app, get_profile
from tests.frontdoors.conftest import MASTER
from tests.hardening.support import LedgerFile
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, LedgerFile]]:
    tmp: Path = tmp_path_factory.mktemp("frontdoors-features")
    ledger = LedgerFile(tmp / "ledger.db")
    failing = create_simulator_app(get_profile("fast"), model_name="x", faults="error_500")  # healthy, answers 500
    with (
        run_asgi_server(create_simulator_app(get_profile("fast"), model_name="sim", seed=3)) as sim,
        run_asgi_server(failing) as bad,
    ):
        settings = settings_from_dict(
            {
                "models": [
                    {
                        "name": "bad",
                        "backend": "openai",
                        "base_url": bad + "/v1",
                        "upstream_model": "x",
                        "quality": 9.9,
                    },
                    {
                        "name": "small",
                        "backend": "openai",
                        "base_url": sim + "/v1",
                        "upstream_model": "sim",
                        "quality": 5,
                    },
                ],
                "routes": {"best": {"models": ["bad", "small"], "policy": "quality"}},
                "retry": {"max_attempts": 2, "backoff_base_ms": 0},
                "cache": {"enabled": True},
                "server": {"metrics_scrape_seconds": 3600},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
            }
        )
        with serve_gateway(settings) as running:
            yield running, ledger


async def test_responses_cache_hit_json_and_stream(gw: tuple[RunningGateway, LedgerFile]) -> None:
    async with openai.AsyncOpenAI(base_url=gw[0].base_url + "/v1", api_key=MASTER, max_retries=0) as c:
        # stored (the API's default): store=False keeps the answer out of the cache too (test_cache_isolation.py)
        args: dict[str, Any] = {"model": "small", "input": "Cache me", "temperature": 0}
        first = await c.responses.with_raw_response.create(**args)
        await gw[0].wait_writes()
        second = await c.responses.with_raw_response.create(**args)
        assert first.headers["x-gateway-cache"] == "miss" and second.headers["x-gateway-cache"] == "hit"
        assert second.parse().output_text == first.parse().output_text
        assert second.parse().id != first.parse().id  # a new response, the same answer
        async with c.responses.stream(**args) as stream:
            final = await stream.get_final_response()
        assert final.output_text == first.parse().output_text
    row = await gw[1].one_row(second.headers["x-request-id"])
    assert row["cache_status"] == "hit" and row["endpoint"] == "responses"


async def test_messages_cache_hit(gw: tuple[RunningGateway, LedgerFile]) -> None:
    async with anthropic.AsyncAnthropic(base_url=gw[0].base_url, api_key=MASTER, max_retries=0) as c:
        args: dict[str, Any] = {"model": "small", "max_tokens": 20, "messages": [{"role": "user", "content": "Cache"}]}
        args["extra_body"] = {"temperature": 0}
        first = await c.messages.with_raw_response.create(**args)
        await gw[0].wait_writes()
        second = await c.messages.with_raw_response.create(**args)
        assert second.headers["x-gateway-cache"] == "hit"
        assert (await second.parse()).content == (await first.parse()).content
        async with c.messages.stream(**args) as stream:
            assert await stream.get_final_text() == (await first.parse()).content[0].text


async def test_fallback_behind_both_apis(gw: tuple[RunningGateway, LedgerFile]) -> None:
    async with openai.AsyncOpenAI(base_url=gw[0].base_url + "/v1", api_key=MASTER, max_retries=0) as c:
        raw = await c.responses.with_raw_response.create(model="best", input="Hi", store=False)
    assert raw.headers["x-gateway-model"] == "small" and raw.parse().output_text
    row = await gw[1].one_row(raw.headers["x-request-id"])
    assert row["attempts"] == 2 and row["route"] == "best"
    async with anthropic.AsyncAnthropic(base_url=gw[0].base_url, api_key=MASTER, max_retries=0) as a:
        msg = await a.messages.with_raw_response.create(
            model="best", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    assert msg.headers["x-gateway-model"] == "small"
    assert (await gw[1].one_row(msg.headers["x-request-id"]))["attempts"] == 2
