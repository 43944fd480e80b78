"""The monitor's daily budget across processes: ``gateway serve --workers 3`` over one Redis and one ledger, sampling
every answer against a small ``quality.daily_budget_usd``.

Before, each worker kept its own running total of the day's monitoring spend (synced from the ledger every
``report_interval_seconds``), so three workers spent about three budgets, and ``GET /admin/quality`` reported the
answering worker's own total, which differed from worker to worker and from the ledger. Now the budget is one
counter per UTC day in Redis, reserved atomically before a sample's calls and settled to what they cost: the day
ends at most one sample above the cap (docs/quality.md, "Money"), whatever the number of processes, and
``spent_today_usd`` is the ledger's figure for the whole deployment, the same from every worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from gateway.accounting.schema import ledger
from tests.helpers.processes import GatewayProcess
from tests.helpers.redis import SYSTEM_REDIS, delete_prefix, redis_answers
from tests.quality.conftest import MASTER, admin
from tests.quality.test_monitor_live import fetch

BUDGET = Decimal("0.1")
REQUESTS = 60
WORKERS = 3
CONCURRENCY = 2  # quality.concurrency's default: judging workers per process


@pytest.fixture
def prefix() -> Iterator[str]:
    """A private namespace in the machine's Redis (skips without one), deleted afterwards."""
    if not redis_answers(SYSTEM_REDIS):
        pytest.skip("no Redis at 127.0.0.1:6379")
    value = f"gwtest:qbudget:{uuid.uuid4().hex[:8]}:"
    yield value
    delete_prefix(SYSTEM_REDIS, value)


def write_config(path: Path, sims: dict[str, str], db_url: str, prefix: str | None) -> Path:
    """Route ``auto`` over weak (served) and strong (the reference and judge), every answer sampled; the budget in
    Redis under ``prefix``, or (None) without Redis."""
    models = [
        {"name": "weak", "backend": "openai", "base_url": f"{sims['weak']}/v1", "upstream_model": "weak",
         "quality": 5, "input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"},
        {"name": "strong", "backend": "openai", "base_url": f"{sims['strong']}/v1", "upstream_model": "strong",
         "quality": 9, "input_cost_per_token": "0.00003", "output_cost_per_token": "0.00006"},
    ]  # fmt: skip
    config: dict[str, Any] = {
        "models": [{"context_window": 8192, **m} for m in models],
        "routes": {"auto": {"models": ["weak", "strong"], "policy": "cost", "min_quality": 0}},
        "cache": {"enabled": False},
        "retry": {"max_attempts": 1, "backoff_base_ms": 0},
        "server": {"metrics_scrape_seconds": 3600},
        "ledger": {"url": db_url, "flush_interval_seconds": 0.05},
        # judge_max_tokens near the simulated judge's ~20-token verdicts: a sample's reservation (its worst case)
        # stays near its cost
        "quality": {"enabled": True, "sample_rate": 1.0, "daily_budget_usd": str(BUDGET), "judge_max_tokens": 32},
    }
    if prefix is not None:
        config["auth"] = {"redis_url": SYSTEM_REDIS, "redis_prefix": f"{prefix}auth:"}
        config["quality"]["redis_prefix"] = f"{prefix}quality:"
    else:
        config["quality"]["budget_sync_seconds"] = 0  # re-read the ledger before every sample
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def send(url: str, n: int) -> None:
    """``n`` chat requests, six at a time, each on a new connection (so the kernel spreads them over the workers)."""
    gate = asyncio.Semaphore(6)

    async def one(i: int) -> None:
        body = {"model": "auto", "messages": [{"role": "user", "content": f"plain question {i}"}], "max_tokens": 16}
        async with gate, httpx.AsyncClient(timeout=30, headers=admin()) as client:
            r = await client.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["x-gateway-model"] == "weak"

    await asyncio.gather(*(one(i) for i in range(n)))


async def monitoring_rows(db_url: str) -> list[Any]:
    return await fetch(db_url, select(ledger).where(ledger.c.policy == "monitor"))


async def wait_drained(db_url: str, timeout_s: float = 90.0) -> list[Any]:
    """The ledger's monitoring rows once they stopped changing for 3 s (every worker's monitor is idle)."""
    deadline = time.monotonic() + timeout_s
    last: tuple[int, Decimal] | None = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        rows = await monitoring_rows(db_url)
        now = (len(rows), sum((r["cost_usd"] for r in rows), Decimal(0)))
        if now != last:
            last, since = now, time.monotonic()
        elif rows and time.monotonic() - since >= 3.0:
            return rows
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the monitors did not settle in {timeout_s} s: {last}")


def sample_costs(rows: list[Any]) -> dict[str, Decimal]:
    """Each sample's cost (its calls' rows are ``REQUEST_ID:qN``)."""
    out: dict[str, Decimal] = defaultdict(Decimal)
    for r in rows:
        out[r["request_id"].rsplit(":q", 1)[0]] += r["cost_usd"]
    return out


async def admin_quality(url: str, times: int) -> list[dict[str, Any]]:
    """``GET /admin/quality``'s monitor object, each time on a new connection (any worker may answer)."""
    out = []
    for _ in range(times):
        async with httpx.AsyncClient(timeout=30, headers=admin()) as client:
            r = await client.get(f"{url}/admin/quality")
        assert r.status_code == 200, r.text
        out.append(r.json()["monitor"])
    return out


async def run_workers(config: Path, tmp_path: Path, db_url: str) -> tuple[list[Any], list[dict[str, Any]], str]:
    """Start ``gateway serve --workers 3``, send the requests, wait for the monitors; the ledger's monitoring rows,
    ``/admin/quality``'s monitor objects and the log."""
    gw = GatewayProcess(config, tmp_path / "gw.log", "--workers", str(WORKERS), env={"GATEWAY_MASTER_KEY": MASTER})
    try:
        await asyncio.to_thread(gw.wait_ready, 120)
        await send(gw.base_url, REQUESTS)
        rows = await wait_drained(db_url)
        monitors = await admin_quality(gw.base_url, 3 * WORKERS)
    finally:
        await asyncio.to_thread(gw.stop)
    return rows, monitors, gw.log()


async def test_workers_share_one_daily_budget(sims: dict[str, str], tmp_path: Path, db_url: str, prefix: str) -> None:
    rows, monitors, log = await run_workers(
        write_config(tmp_path / "gateway.yaml", sims, db_url, prefix), tmp_path, db_url
    )
    spent = sum((r["cost_usd"] for r in rows), Decimal(0))
    per_sample = sample_costs(rows)
    largest = max(per_sample.values())
    # The bound (docs/quality.md, "Money"): the day ends at most one sample's cost above the cap, deployment-wide.
    assert spent <= BUDGET + largest, (
        f"{WORKERS} workers spent {spent} on monitoring against a budget of {BUDGET} (one sample costs up to {largest}; "
        f"{len(per_sample)} samples)\n{log[-3000:]}"
    )
    assert spent >= BUDGET  # and all of it was used: samples held back by others in flight waited for them
    # Every worker reports the deployment's figure, the ledger's, not its own running total.
    reported = {m["spent_today_usd"] for m in monitors}
    assert reported == {f"{spent:f}"}, (reported, spent)
    assert all(m["daily_budget_usd"] == f"{BUDGET:f}" for m in monitors)
    # the counter the cap is checked against holds what the ledger holds, nothing left reserved
    assert {(m["budget_store"], m["budget_counted_usd"], m["budget_reserved_usd"]) for m in monitors} == {
        ("redis", f"{spent:f}", "0.000000000000")
    }
    assert all(m["process_queued"] == 0 and m["process_in_progress"] == 0 for m in monitors)


async def test_without_redis_every_worker_reports_the_deployment_s_spend(sims: dict[str, str], tmp_path: Path) -> None:
    """Without Redis each worker checks the cap against its own figure, re-read from the ledger before a sample
    (``quality.budget_sync_seconds``: 0 here), a weaker bound (docs/quality.md, "Money"); ``spent_today_usd`` is
    the ledger's all the same, whichever worker answers."""
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    rows, monitors, log = await run_workers(
        write_config(tmp_path / "gateway.yaml", sims, db_url, None), tmp_path, db_url
    )
    spent = sum((r["cost_usd"] for r in rows), Decimal(0))
    largest = max(sample_costs(rows).values())
    # The bound without Redis, synced before every sample: one sample, plus what the other workers had in flight
    # (quality.concurrency each) or had not yet written to the ledger. Before, each worker spent a budget of its own.
    assert BUDGET <= spent <= BUDGET + WORKERS * CONCURRENCY * largest, (spent, largest, log[-3000:])
    reported = {m["spent_today_usd"] for m in monitors}
    assert reported == {f"{spent:f}"}, (reported, spent)
    assert {m["budget_store"] for m in monitors} == {"process"}
