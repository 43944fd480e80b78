"""Issue 20's budget target: 50 concurrent requests of every shape (chat and completions, streamed and not,
prompt lists, ``n`` > 1, with and without ``max_tokens``) from TWO gateway processes sharing Redis and one
PostgreSQL ledger: the key's spend never exceeds its budget (the reserve covers each request's worst case,
and a stream or answer that would cost more than its reserve is cut)."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.accounting.conftest import REDIS_URL
from tests.deploy.test_scale_out import pg_or_skip, prefix, upstream  # noqa: F401 (fixtures)
from tests.helpers.processes import GatewayProcess

MASTER = "sk-master-" + uuid.uuid4().hex
BUDGET = Decimal("0.02")


def write_config(path: Path, upstream_url: str, db_url: str, prefix_: str) -> Path:
    model = {
        "name": "sim",
        "backend": "openai",
        "base_url": f"{upstream_url}/v1",
        "upstream_model": "sim-fast",
        "input_cost_per_token": "0.000001",
        "output_cost_per_token": "0.00002",
        "max_output_tokens": 48,  # the reserve's output limit when max_tokens is absent
    }
    config = {
        "models": [model],
        "retry": {"max_attempts": 1},
        "server": {"metrics_scrape_seconds": 3600, "max_n": 4, "max_prompts": 8},
        "cache": {"enabled": False},
        "auth": {"redis_url": REDIS_URL, "redis_prefix": f"{prefix_}auth:"},
        "ledger": {"url": db_url, "flush_interval_seconds": 0.05},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def shapes() -> list[tuple[str, dict[str, Any]]]:
    user = [{"role": "user", "content": "Write a short note about budgets."}]
    out: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {"model": "sim", "messages": user}),
        ("/v1/chat/completions", {"model": "sim", "messages": user, "stream": True}),
        ("/v1/chat/completions", {"model": "sim", "messages": user, "n": 3, "max_tokens": 20}),
        ("/v1/chat/completions", {"model": "sim", "messages": user, "n": 2, "stream": True}),
        ("/v1/completions", {"model": "sim", "prompt": [f"story {i}" for i in range(8)]}),
        ("/v1/completions", {"model": "sim", "prompt": ["a", "b", "c"], "n": 2, "stream": True}),
        ("/v1/completions", {"model": "sim", "prompt": "one", "max_tokens": 30}),
    ]
    return [out[i % len(out)] for i in range(50)]


async def spend(db_url: str, key_id: str) -> tuple[Decimal, int]:
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        row = await conn.fetchrow(
            "SELECT COALESCE(SUM(cost_usd), 0) AS s, COUNT(*) AS n FROM gw_ledger WHERE key_id = $1", key_id
        )
    finally:
        await conn.close()
    return Decimal(row["s"]), int(row["n"])


def test_two_processes_never_overspend(tmp_path: Path, prefix: str, upstream: str) -> None:  # noqa: F811
    with pg_or_skip(tmp_path) as db_url:
        config = write_config(tmp_path / "gateway.yaml", upstream, db_url, prefix)
        env = {"GATEWAY_MASTER_KEY": MASTER}
        a = GatewayProcess(config, tmp_path / "a.log", env=env)
        b = GatewayProcess(config, tmp_path / "b.log", env=env)
        try:
            a.wait_ready()
            b.wait_ready()
            admin = {"authorization": f"Bearer {MASTER}"}
            made = httpx.post(
                f"{a.base_url}/admin/keys", json={"name": "shared", "budget_usd": str(BUDGET)}, headers=admin
            ).json()
            key = {"authorization": f"Bearer {made['key']}"}

            async def fire() -> list[int]:
                async with httpx.AsyncClient(timeout=60, headers=key) as c:
                    calls = [
                        c.post((a if i % 2 else b).base_url + path, json=body)
                        for i, (path, body) in enumerate(shapes())
                    ]
                    return [r.status_code for r in await asyncio.gather(*calls)]

            statuses = asyncio.run(fire())
            assert set(statuses) <= {200, 402}, statuses
            assert statuses.count(200) >= 1 and statuses.count(402) >= 1, statuses
            total, rows = Decimal(0), 0
            for _ in range(100):  # the ledger writers flush every 50 ms
                total, rows = asyncio.run(spend(db_url, made["id"]))
                if rows == len(statuses):
                    break
                asyncio.run(asyncio.sleep(0.1))
            assert rows == len(statuses)
            assert 0 < total <= BUDGET, f"spent ${total} of ${BUDGET} ({statuses.count(200)} served)"
        finally:
            a.stop()
            b.stop()
