"""Fixtures for the quality monitor's tests: simulated weak and strong models (the strong one also judges, from
a ground truth the test sets), and a gateway over them with the monitor on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Settings, settings_from_dict
from gateway.simulator import create_simulator_app
from gateway.simulator.answers import REFUSAL_TEXT
from tests.accounting.conftest import db_url  # noqa: F401  (the fixture: both ledgers)
from tests.helpers.redis import SYSTEM_REDIS, delete_prefix, redis_answers
from tests.helpers.servers import RunningGateway

MASTER = "master-" + uuid.uuid4().hex
#: The truth: the weak model refuses prompts with "hard" (it loses), the strong one prompts with "trick" (the weak
#: one wins); anything else ties. The judge scores a refusal 0 and any other answer 5, and breaks ties towards
#: position A (a biased judge: judging both orders must cancel it).
WEAK_RULES = [{"match": "hard", "behaviour": "refuse"}]
STRONG_RULES = [{"match": "trick", "behaviour": "refuse"}]
JUDGE = {"pairwise": [{"match": REFUSAL_TEXT[:30], "score": 0}], "default_score": 5, "position_bias": "A"}


@pytest.fixture
def sims() -> Iterator[dict[str, str]]:
    """Base URLs of the weak and strong simulators (the strong one is the judge too)."""
    from tests.helpers.servers import ServerThread

    weak = ServerThread(create_simulator_app("fast", time_scale=0.01, model_name="weak", answer_rules=WEAK_RULES))
    strong = ServerThread(
        create_simulator_app("fast", time_scale=0.01, model_name="strong", answer_rules=STRONG_RULES, judge=JUDGE)
    )
    weak.start()
    strong.start()
    try:
        yield {"weak": weak.base_url, "strong": strong.base_url}
    finally:
        weak.stop()
        strong.stop()


@pytest.fixture(autouse=True)
def master(monkeypatch: pytest.MonkeyPatch) -> str:
    """GATEWAY_MASTER_KEY for every test here (admin endpoints need it)."""
    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER)
    return MASTER


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A private Redis namespace for the keys' limits (skips without Redis)."""
    if not redis_answers(SYSTEM_REDIS):
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"gwtest:quality:{uuid.uuid4().hex[:8]}:"
    yield prefix
    delete_prefix(SYSTEM_REDIS, prefix)


def make_settings(
    sims: dict[str, str],
    tmp_path: Path,
    *,
    quality: dict[str, Any],
    auth: str | None = None,
    models: dict[str, dict[str, Any]] | None = None,
    ledger_url: str | None = None,
) -> Settings:
    """Route ``auto`` over weak (cheap, chosen by the cost policy) and strong (the reference)."""
    spec: dict[str, dict[str, Any]] = {
        "weak": {"base_url": f"{sims['weak']}/v1", "upstream_model": "weak", "quality": 5,
                 "input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"},
        "strong": {"base_url": f"{sims['strong']}/v1", "upstream_model": "strong", "quality": 9,
                   "input_cost_per_token": "0.00003", "output_cost_per_token": "0.00006"},
    }  # fmt: skip
    for name, extra in (models or {}).items():
        spec.setdefault(name, {}).update(extra)
    data: dict[str, Any] = {
        "models": [{"name": n, "backend": "openai", "context_window": 8192, **m} for n, m in spec.items()],
        "routes": {"auto": {"models": ["weak", "strong"], "policy": "cost", "min_quality": 0}},
        "cache": {"enabled": False},
        "retry": {"max_attempts": 1, "backoff_base_ms": 0},
        "server": {"metrics_scrape_seconds": 3600},
        "ledger": {"url": ledger_url or f"sqlite+aiosqlite:///{tmp_path}/ledger.db", "flush_interval_seconds": 0.05},
        "quality": {"enabled": True, "sample_rate": 1.0, **quality},
    }
    if auth is not None:
        data["auth"] = {"enabled": True, "redis_url": SYSTEM_REDIS, "redis_prefix": auth}
    return settings_from_dict(data)


def admin() -> dict[str, str]:
    """The master key's header."""
    return {"authorization": f"Bearer {MASTER}"}


async def wait_judged(gw: RunningGateway, n: int, timeout_s: float = 20.0) -> None:
    """Wait until the monitor has finished ``n`` samples (whatever their outcome)."""
    monitor = gw.gateway.monitor
    assert monitor is not None
    for _ in range(int(timeout_s / 0.02)):
        done = sum(monitor.samples.labels(o)._value.get() for o in ("judged", "no_verdict", "failed"))
        if done >= n and monitor.queue.empty() and monitor.in_progress == 0:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the monitor finished fewer than {n} samples in {timeout_s} s")


async def quality(gw: RunningGateway, group_by: str = "route", headers: dict[str, str] | None = None) -> Any:
    """``GET /admin/quality``'s body."""
    async with httpx.AsyncClient(base_url=gw.base_url) as client:
        r = await client.get("/admin/quality", params={"group_by": group_by}, headers=headers or admin())
    assert r.status_code == 200, r.text
    return r.json()
