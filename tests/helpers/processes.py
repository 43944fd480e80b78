"""Real ``gateway serve`` processes, for the multi-replica, multi-worker and browser tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers.ports import free_port
from tests.helpers.servers import REPO_ROOT

__all__ = ["GatewayProcess", "one_model_config"]

#: Variables of the test's own environment that would configure the gateway behind the config file's back.
_NOT_INHERITED = ("REDIS_URL", "DATABASE_URL")


class GatewayProcess:
    """``python -m gateway serve --config CONFIG --port PORT [EXTRA...]`` in a subprocess.

    The config file is the gateway's only configuration: the test's ``GATEWAY_*``, ``REDIS_URL`` and
    ``DATABASE_URL`` are not inherited; ``env`` adds variables of the test's choosing (e.g. the master key).
    """

    def __init__(self, config: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k not in _NOT_INHERITED}
        full_env.update(env or {})
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(self.port), *extra]
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until ``/health`` answers (the process is killed if it does not in time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"gateway not ready in {timeout} s:\n{self.log()}")

    def worker_pids(self, started: int, timeout: float = 90.0) -> list[int]:
        """The live worker processes of ``--workers N``, once ``started`` of them (replacements included) have
        finished start-up."""
        deadline = time.monotonic() + timeout
        while self.log().count("Application startup complete") < started:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.log()
            time.sleep(0.1)
        pids = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", self.log())]
        return [p for p in pids if "State:\tZ" not in _status(p) and Path(f"/proc/{p}").exists()]

    def log(self) -> str:
        """What the process printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        """Send SIGTERM (graceful: uvicorn drains, the lifespan flushes the ledger); does not wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; SIGKILL if it hangs. Returns the exit code."""
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """Stop abruptly."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""


def one_model_config(tmp: Path, upstream: str, server: dict[str, Any] | None = None, **extra: Any) -> Path:
    """``tmp/gateway.yaml`` for one priced model ``m`` on ``upstream`` (no retries, no cache, a SQLite ledger in
    ``tmp``, no metrics scrape), with ``server`` settings and top-level ``extra`` added."""
    data: dict[str, Any] = {
        "models": [
            {
                "name": "m",
                "backend": "openai",
                "base_url": f"{upstream}/v1",
                "upstream_model": "m",
                "input_cost_per_token": "0.000001",
                "output_cost_per_token": "0.000002",
            }
        ],
        "retry": {"max_attempts": 1},
        "cache": {"enabled": False},
        "ledger": {"url": f"sqlite+aiosqlite:///{tmp / 'ledger.db'}"},
        "server": {"metrics_scrape_seconds": 3600, **(server or {})},
        **extra,
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path
