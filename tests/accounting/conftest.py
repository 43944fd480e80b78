"""Fixtures for the ledger, keys and limits tests: both databases, a private Redis namespace, and a
gateway running in process over the deterministic test upstream (tests/accounting/upstream.py), which
serves on a loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings, settings_from_dict
from gateway.runtime import Gateway
from tests.accounting.upstream import create_upstream_app
from tests.helpers.redis import delete_prefix
from tests.helpers.servers import run_asgi_server
from tests.helpers.upstream import with_base_urls

PG_ADMIN_URL = os.environ.get("GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")
MASTER = "master-" + uuid.uuid4().hex

# Prices (USD per token) of the workload's models; the baseline is litellm's gpt-4 (3e-05 / 6e-05).
PRICES: dict[str, tuple[Decimal, Decimal]] = {
    "hosted-a": (Decimal("0.000001234567"), Decimal("0.000009876543")),
    "hosted-nousage": (Decimal("0.0000005"), Decimal("0.0000015")),
    "broken": (Decimal("0.00001"), Decimal("0.00002")),
}
GPT4 = (Decimal("0.00003"), Decimal("0.00006"))
GPT4O = (Decimal("0.0000025"), Decimal("0.00001"))  # litellm's price map, by upstream name


def workload_models() -> list[dict[str, Any]]:
    """The models of the test config (all served by the test upstream at http://up/v1)."""
    out: list[dict[str, Any]] = [
        {"name": "hosted-a", "upstream_model": "a"},
        {"name": "hosted-nousage", "upstream_model": "b-nousage"},
        {"name": "broken", "upstream_model": "x-fail"},
    ]
    for m in out:
        inp, outp = PRICES[m["name"]]
        m.update(
            backend="openai",
            base_url="http://up/v1",
            input_cost_per_token=str(inp),
            output_cost_per_token=str(outp),
            quality=5,
        )
    out.append(
        {"name": "gpt4o", "backend": "openai", "base_url": "http://up/v1", "upstream_model": "gpt-4o", "quality": 8}
    )
    out.append(
        {
            "name": "local",
            "backend": "vllm",
            "base_url": "http://up/v1",
            "upstream_model": "l",
            "gpu_hour_usd": "2.0",
            "tokens_per_second": 500,
            "quality": 4,
        }
    )
    return out


def make_settings(
    db_url: str, *, auth: bool = False, redis_prefix: str | None = None, base_url: str | None = None, **extra: Any
) -> Settings:
    """A config for the workload models over ``db_url``."""
    models = workload_models()
    if base_url is not None:
        for m in models:
            m["base_url"] = base_url
    data: dict[str, Any] = {
        "models": models,
        "retry": {"max_attempts": 1, "backoff_base_ms": 0},
        "cache": {"enabled": False},
        "server": {"metrics_scrape_seconds": 3600},
        "ledger": {"url": db_url, "flush_interval_seconds": 0.05},
        "auth": {"enabled": auth, "key_cache_seconds": 30},
    }
    if redis_prefix is not None:
        data["auth"].update(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    for k, v in extra.items():
        data[k] = {**data.get(k, {}), **v}
    return settings_from_dict(data)


# -- databases ------------------------------------------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of ``kind`` (sqlite file, or a PostgreSQL database dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    name = f"gwtest_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test runs on both ledgers."""
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database (for tests that need a TCP database)."""
    with database_url("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A private key namespace in the real Redis, deleted afterwards."""
    prefix = f"gwtest:{uuid.uuid4().hex[:10]}:"
    yield prefix
    delete_prefix(REDIS_URL, prefix)


@pytest.fixture
def master_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """GATEWAY_MASTER_KEY for this test."""
    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER)
    return MASTER


# -- an in-process gateway ------------------------------------------------------------------------------


@contextlib.contextmanager
def upstream_app(settings: Settings) -> Iterator[Settings]:
    """Serve the test upstream on a loopback socket for the block; yields ``settings`` with the models'
    ``http://up`` base URLs pointing at it."""
    with run_asgi_server(create_upstream_app()) as base:
        yield with_base_urls(settings, lambda url: url.replace("http://up", base))


@contextlib.asynccontextmanager
async def gateway_client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """The gateway app (lifespan run) in process, over the test upstream; yields (client, gateway)."""
    with upstream_app(settings) as served:
        app = create_app(served)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as client:
                yield client, app.state.gateway


def auth_header(key: str) -> dict[str, str]:
    """The Bearer header for ``key``."""
    return {"authorization": f"Bearer {key}"}


def chat(
    model: str,
    text: str = "hello there",
    *,
    stream: bool = False,
    max_tokens: int | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """A chat request body."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if user is not None:
        body["user"] = user
    return body
