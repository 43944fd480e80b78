"""The request log never holds up requests: a reader that stops reading it costs log lines, not traffic.

The log was written on the event loop: once nobody read the server's stderr (a paused terminal, a log shipper
fallen behind) and the pipe's 64 KiB filled, the next write blocked the loop and every request hung, health
checks included (128 requests in, with the bench config).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiohttp import web

from gateway.logs import BackgroundStreamHandler, JSONFormatter
from tests.gateway.conftest import chat_reply
from tests.helpers.ports import free_port
from tests.helpers.servers import REPO_ROOT
from tests.helpers.upstream import Seen, Upstream


def _record(i: int) -> logging.LogRecord:
    return logging.LogRecord("gateway.test", logging.INFO, __file__, 0, "line %d", (i,), None)


def _handler(stream: Any, capacity: int) -> BackgroundStreamHandler:
    handler = BackgroundStreamHandler(stream, capacity=capacity)
    handler.setFormatter(JSONFormatter())
    return handler


def test_a_stream_nobody_reads_drops_lines_counts_them_and_says_so_once_read_again() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    handler = _handler(stream, capacity=100)
    emitted = threading.Event()

    def emit_many() -> None:
        for i in range(5_000):  # ~300 KiB of lines: far more than the pipe holds
            handler.handle(_record(i))
        emitted.set()

    threading.Thread(target=emit_many, daemon=True).start()
    assert emitted.wait(30), "logging blocked on a stream nobody reads"
    assert handler.dropped > 0

    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(_read_all(read_end)), daemon=True)
    reader.start()
    attempts = 0
    while handler.dropped:  # read again: once there is room, the count goes out, then the line
        attempts += 1
        handler.handle(_record(-1))
        time.sleep(0.01)
    handler.close()
    stream.close()
    reader.join(10)
    lines = [json.loads(line) for line in received.decode().splitlines()]
    assert lines[-1]["msg"] == "line -1" and lines[-2]["level"] == "warning"
    suffix = " log lines dropped: the log stream was not read as fast as lines came"
    warnings = [line["msg"] for line in lines if line["level"] == "warning"]
    assert warnings and all(w.endswith(suffix) for w in warnings)
    numbers = [int(line["msg"].split()[1]) for line in lines[:-1] if line["level"] == "info"]
    assert numbers == sorted(numbers)  # in order
    dropped = sum(int(w.split()[0]) for w in warnings)
    assert len(numbers) + dropped == 5_000 + attempts - 1  # each line written or counted


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def test_lines_reach_the_stream_in_order_and_close_writes_what_is_queued() -> None:
    stream = io.StringIO()
    handler = _handler(stream, capacity=10_000)
    for i in range(2_000):
        handler.handle(_record(i))
    handler.close()
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == [f"line {i}" for i in range(2_000)]


async def test_the_server_keeps_serving_while_nobody_reads_its_log(tmp_path: Path) -> None:
    async def handler(seen: Seen) -> web.StreamResponse:
        if seen.method != "POST":
            return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})
        return web.json_response(chat_reply("m"))

    async with Upstream(handler) as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "models": [
                        {
                            "name": "m",
                            "backend": "openai",
                            "base_url": f"{upstream.url}/v1",
                            "upstream_model": "m",
                            "input_cost_per_token": "0.000001",
                            "output_cost_per_token": "0.000002",
                        }
                    ],
                    "cache": {"enabled": False},
                    "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"},
                }
            )
        )
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env["PYTHONPATH"] = str(REPO_ROOT)
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
        # stdout and stderr into one pipe that this test never reads until the end
        proc = await asyncio.to_thread(
            subprocess.Popen, argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                deadline = time.monotonic() + 60
                while True:
                    assert proc.poll() is None, "the gateway exited"
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "the gateway did not start"
                    await asyncio.sleep(0.05)
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                for _ in range(600):  # ~300 KiB of request log lines: the pipe holds 64 KiB
                    r = await client.post("/v1/chat/completions", json=body)
                    assert r.status_code == 200
                assert (await client.get("/health")).status_code == 200
        finally:
            proc.terminate()
            out, _ = await asyncio.to_thread(proc.communicate, None, 30)
    requests = [line for line in out.decode().splitlines() if '"msg":"request"' in line]
    assert requests, "no request line was written once the pipe was read"


class _Gate:
    """A stream whose writes wait until the test opens it."""

    def __init__(self) -> None:
        self.open, self.entered = threading.Event(), threading.Event()
        self.text: list[str] = []

    def write(self, text: str) -> None:
        self.entered.set()
        self.open.wait(10)
        self.text.append(text)

    def flush(self) -> None:
        return None


def test_each_dropped_line_is_reported_once_and_none_is_left_unreported_at_stop() -> None:
    stream = _Gate()
    handler = _handler(stream, capacity=3)
    handler.handle(_record(0))
    assert stream.entered.wait(5)  # the writer holds line 0 in a write that waits
    for i in range(1, 4):
        handler.handle(_record(i))  # the queue is full
    handler.handle(_record(4))  # dropped: 1
    handler._lines.get_nowait()  # one slot frees, as the writer's get() does
    handler.handle(_record(5))  # the warning (1) takes the slot; this line is dropped: 1 more, counted once
    stream.open.set()
    handler.stop_writer()  # the one still counted is reported now
    handler.handle(_record(6))
    handler.close()
    text = "".join(stream.text)
    assert sum(int(n) for n in re.findall(r"(\d+) log lines dropped", text)) == 2, text


def test_a_stream_that_keeps_up_gets_each_line_before_the_call_returns() -> None:
    # no thread handoff on the request path while the reader keeps up (one cost the 1-connection latency)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    stream = os.fdopen(write_end, "w")
    handler = _handler(stream, capacity=100)
    for i in range(3):
        handler.handle(_record(i))
        assert json.loads(os.read(read_end, 65536))["msg"] == f"line {i}"  # already there
    handler.close()
    stream.close()
    os.close(read_end)
