"""Test helpers that run servers on real sockets.

* :func:`run_asgi_server` / :class:`ServerThread`: run any ASGI app under uvicorn on
  ``127.0.0.1`` (an ephemeral port) in a background thread; usable from sync and async
  tests alike (the server has its own event loop).
* :func:`serve_gateway`: the gateway app for a config, served that way, with its runtime at hand.
* :func:`start_simulator_process`: run ``python -m gateway.simulator`` as a separate
  process (for tests that kill a backend), waiting until ``/health`` answers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from gateway.app import create_app
from gateway.config import Settings
from gateway.runtime import Gateway
from tests.helpers.ports import free_port

__all__ = [
    "RunningGateway",
    "ServerThread",
    "SimulatorProcess",
    "free_port",
    "run_asgi_server",
    "serve_gateway",
    "start_simulator_process",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServerThread:
    """Runs an ASGI app under uvicorn in a daemon thread.

    The listening socket is bound before the thread starts (port 0 = ephemeral), so
    :attr:`port` and :attr:`base_url` are known at once; :meth:`start` returns when the
    server accepts requests.  Extra keyword arguments go to :class:`uvicorn.Config`.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        startup_timeout: float = 10.0,
        graceful_shutdown_s: int = 1,
        **config: Any,
    ) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://{host}:{self.port}"
        self.startup_timeout = startup_timeout
        cfg = uvicorn.Config(
            app,
            log_level=log_level,
            timeout_graceful_shutdown=graceful_shutdown_s,
            **config,
        )
        self.server = uvicorn.Server(cfg)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name=f"uvicorn-{self.port}", daemon=True
        )

    def start(self) -> str:
        """Start serving and wait until the server is up; returns :attr:`base_url`."""
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn server thread exited during startup")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server did not start within {self.startup_timeout} s")
            time.sleep(0.005)
        return self.base_url

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for the thread (forcing exit if it lingers)."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def run_asgi_server(app: Any, **kwargs: Any) -> Iterator[str]:
    """Serve ``app`` on ``127.0.0.1`` (ephemeral port) for the ``with`` block; yields the base URL.

    Keyword arguments are those of :class:`ServerThread` (``host``, ``port``, ``log_level``,
    ``startup_timeout``, ``graceful_shutdown_s``, and any :class:`uvicorn.Config` option).

    Example::

        with run_asgi_server(create_simulator_app("fast")) as base_url:
            httpx.get(f"{base_url}/health")
    """
    server = ServerThread(app, **kwargs)
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


@dataclass(slots=True)
class RunningGateway:
    """A gateway app served by uvicorn in a thread, with access to its runtime."""

    base_url: str
    server: ServerThread
    app: Any

    @property
    def gateway(self) -> Gateway:
        """The runtime the app's lifespan built."""
        gw: Gateway = self.app.state.gateway
        return gw

    async def wait_writes(self) -> None:
        """Wait (10 s at most) until the response cache's background writes, in the server's thread, are done."""
        cache: Any = self.gateway.cache
        for _ in range(2000):
            if not cache.pending_writes:
                return
            await asyncio.sleep(0.005)
        raise TimeoutError("cache writes still pending after 10 s")


@contextmanager
def serve_gateway(settings: Settings, **uvicorn_options: Any) -> Iterator[RunningGateway]:
    """The gateway for ``settings`` on an ephemeral port; its loggers propagate to the root (caplog). The start-up
    may take a while (the semantic cache loads its model), so it is given 30 s unless told otherwise."""
    app = create_app(settings)
    server = ServerThread(app, log_config=None, **{"startup_timeout": 30.0, **uvicorn_options})
    server.start()
    try:
        yield RunningGateway(server.base_url, server, app)
    finally:
        server.stop()


class SimulatorProcess:
    """A ``python -m gateway.simulator`` subprocess; use as a context manager or call :meth:`stop`."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, log_path: Path) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}"
        self.log_path = log_path

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def log(self) -> str:
        """What the process wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """Kill the process abruptly (SIGKILL), as a crashed backend would vanish."""
        if self.alive:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after ``timeout``) and clean up."""
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_simulator_process(
    profile: str = "fast",
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    time_scale: float | None = None,
    max_concurrency: int | None = None,
    model_name: str | None = None,
    seed: int | None = None,
    fault: str | None = None,
    startup_timeout: float = 30.0,
    extra_args: list[str] | None = None,
) -> SimulatorProcess:
    """Start the simulator in a subprocess and wait until its ``/health`` answers 200.

    Raises:
        RuntimeError: if the process exits or does not become healthy in time.
    """
    port = port or free_port(host)
    args = [sys.executable, "-m", "gateway.simulator", "--profile", profile, "--host", host, "--port", str(port)]
    args += ["--log-level", "warning"]
    for flag, value in (
        ("--time-scale", time_scale),
        ("--max-concurrency", max_concurrency),
        ("--model-name", model_name),
        ("--seed", seed),
        ("--fault", fault),
    ):
        if value is not None:
            args += [flag, str(value)]
    args += extra_args or []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    fd, log_name = tempfile.mkstemp(prefix="simulator-", suffix=".log")
    log_path = Path(log_name)
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    sim = SimulatorProcess(proc, host, port, log_path)
    deadline = time.monotonic() + startup_timeout
    while True:
        if not sim.alive:
            output = sim.log()
            sim.stop()
            raise RuntimeError(f"simulator exited with {proc.returncode}:\n{output}")
        try:
            if httpx.get(f"{sim.base_url}/health", timeout=1.0).status_code == 200:
                return sim
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            output = sim.log()
            sim.stop()
            raise RuntimeError(f"simulator did not become healthy in {startup_timeout} s:\n{output}")
        time.sleep(0.05)
