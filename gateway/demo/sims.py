"""The demo's simulated backends: one child process serving several simulator profiles.

``python -m gateway.demo.sims --profiles llama-2-7b,llama-2-13b,gpt-4`` binds one ephemeral port per
profile, prints ``{"profile": port, ...}`` as one JSON line on stdout once every server accepts requests,
and serves until its stdin reaches end-of-file. The parent holds that pipe: when the parent exits for
any reason (Ctrl-C, a crash, SIGKILL) the pipe closes and the child stops, so the demo never leaves
processes behind. The child ignores SIGINT (the parent decides when to stop) and exits on SIGTERM.

:class:`SimulatorFleet` is the parent's side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import uvicorn

from gateway.simulator import create_simulator_app

DEFAULT_PROFILES = ("llama-2-7b", "llama-2-13b", "gpt-4")


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner (several share one event loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: the owner stops the server by setting ``should_exit``."""
        yield


def bind_socket(host: str, port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: an ephemeral port), ready to hand to uvicorn."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def _serve(profiles: Sequence[str], host: str, time_scale: float, seed: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    servers: list[tuple[str, QuietServer, socket.socket]] = []
    for profile in profiles:
        app = create_simulator_app(profile, time_scale=time_scale, seed=seed)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, access_log=False)
        servers.append((profile, QuietServer(config), bind_socket(host)))
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for _, server, sock in servers]
    while not all(server.started for _, server, _ in servers):
        if any(t.done() for t in tasks):
            raise SystemExit("a simulated backend failed to start")
        await asyncio.sleep(0.01)
    ports = {profile: sock.getsockname()[1] for profile, _, sock in servers}
    sys.stdout.write(json.dumps(ports) + "\n")
    sys.stdout.flush()

    def wait_for_eof() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, name="parent-watch", daemon=True).start()
    await stop.wait()
    for _, server, _ in servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the simulators until stdin closes or SIGTERM arrives."""
    parser = argparse.ArgumentParser(prog="python -m gateway.demo.sims", description=__doc__)
    parser.add_argument("--profiles", default=",".join(DEFAULT_PROFILES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve([p for p in args.profiles.split(",") if p], args.host, args.time_scale, args.seed))
    return 0


class SimulatorFleet:
    """The parent's handle on the simulator child process (a context manager)."""

    def __init__(
        self,
        log_path: Path,
        *,
        profiles: Sequence[str] = DEFAULT_PROFILES,
        host: str = "127.0.0.1",
        time_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.profiles = list(profiles)
        self.ports: dict[str, int] = {}
        self._log = log_path.open("ab")
        args = [sys.executable, "-m", "gateway.demo.sims", "--profiles", ",".join(self.profiles)]
        args += ["--host", host, "--time-scale", str(time_scale), "--seed", str(seed)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=dict(os.environ)
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def url(self, profile: str) -> str:
        """The OpenAI base URL of ``profile``'s simulator."""
        return f"http://{self.host}:{self.ports[profile]}/v1"

    async def wait_ready(self, patience_s: float = 60.0) -> dict[str, int]:
        """Wait for the child's port announcement; raise RuntimeError if it dies or takes too long."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), patience_s)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"the simulated backends did not start within {patience_s:.0f} s") from None
        if not line:
            self.stop()
            raise RuntimeError(f"the simulated backends exited during start-up (see {self._log.name})")
        self.ports = {str(k): int(v) for k, v in json.loads(line).items()}
        return self.ports

    def stop(self, timeout: float = 5.0) -> None:
        """Close the child's stdin (it stops), then SIGTERM and SIGKILL if it lingers. Idempotent."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        for escalate in (None, self.proc.terminate, self.proc.kill):
            if escalate is not None and self.proc.poll() is None:
                escalate()
            try:
                self.proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> SimulatorFleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
