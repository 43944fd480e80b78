"""Budgets and rate limits hold across two real gateway processes sharing one Redis; SIGTERM flushes the ledger."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.accounting.conftest import auth_header, chat, make_settings
from tests.accounting.procs import settings_dict, write_config
from tests.accounting.upstream import create_upstream_app
from tests.helpers.processes import GatewayProcess
from tests.helpers.servers import run_asgi_server

COST = Decimal("0.000108641966")  # hosted-a, prompt "hi" (8 tokens), 10 completion tokens
BUDGET = Decimal("0.0012")


@pytest.fixture
def upstream() -> Iterator[str]:
    with run_asgi_server(create_upstream_app()) as base_url:
        yield base_url


async def _post_all(urls: list[str], body: dict[str, object], key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        tasks = [
            client.post(f"{urls[i % 2]}/v1/chat/completions", json=body, headers=auth_header(key)) for i in range(50)
        ]
        return list(await asyncio.gather(*tasks))


def test_two_replicas_share_budgets_and_limits(db_url: str, redis_prefix: str, upstream: str, tmp_path: Path) -> None:
    master = "master-" + uuid.uuid4().hex
    settings = make_settings(db_url, auth=True, redis_prefix=redis_prefix, base_url=f"{upstream}/v1")
    config = write_config(tmp_path / "gateway.yaml", settings_dict(settings))
    env = {"GATEWAY_MASTER_KEY": master}
    procs = [GatewayProcess(config, tmp_path / f"gw{i}.log", env=env) for i in range(2)]
    try:
        for p in procs:
            p.wait_ready()
        urls = [p.base_url for p in procs]
        admin = auth_header(master)
        capped = httpx.post(
            f"{urls[0]}/admin/keys", json={"name": "capped", "budget_usd": str(BUDGET)}, headers=admin
        ).json()
        limited = httpx.post(f"{urls[1]}/admin/keys", json={"name": "limited", "rpm": 10}, headers=admin).json()

        # 50 concurrent requests, alternating between the replicas, each slow enough to overlap
        body = {**chat("hosted-a", "hi", max_tokens=10), "delay": 0.3}
        responses = asyncio.run(_post_all(urls, body, capped["key"]))
        codes = Counter(r.status_code for r in responses)
        assert set(codes) <= {200, 402}, codes
        ok = codes[200]
        assert 8 <= ok <= int(BUDGET / COST), codes  # 8 reserves fit at once; never more than the budget
        assert all(r.json()["error"]["type"] == "insufficient_quota" for r in responses if r.status_code == 402)

        responses = asyncio.run(_post_all(urls, chat("hosted-a", "hi", max_tokens=10), limited["key"]))
        codes = Counter(r.status_code for r in responses)
        assert codes == {200: 10, 429: 40}, codes
        assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)

        metrics = httpx.get(f"{urls[0]}/metrics").text
        assert 'gateway_requests_total{cache="bypass",model="none",route="-",status="4xx"}' in metrics
        assert "gateway_ledger_written_rows_total" in metrics
    finally:
        exit_codes = [p.stop() for p in procs]
    # uvicorn re-raises SIGTERM after its graceful shutdown completes
    assert all(code in (0, -15) for code in exit_codes), [p.log() for p in procs]
    assert all("Application shutdown complete" in p.log() for p in procs)

    # after a graceful shutdown every request is in the ledger, and the budget held
    async def ledger_totals() -> dict[str, tuple[int, Decimal]]:
        from gateway.accounting import open_database
        from gateway.accounting.queries import spend

        db = await open_database(db_url, require=True)
        try:
            rows = await spend(db.engine, "key")
        finally:
            await db.aclose()
        return {r.name or "-": (r.requests, r.cost_usd) for r in rows}

    totals = asyncio.run(ledger_totals())
    assert totals["capped"] == (50, ok * COST)
    assert totals["capped"][1] <= BUDGET
    assert totals["limited"][0] == 50
