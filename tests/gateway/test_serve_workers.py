"""``gateway serve --workers 2`` over sockets: what the supervisor of several workers does (gateway.server).

- A worker that fails to start made the server exit 0 (uvicorn's supervisor stops the others and returns as
  from a clean stop): a service manager or deploy script read a refused start as success. Now exit 3, as with one
  worker.
- A worker started to replace one that died read the configuration file again, and ``router.artifact``: an edit
  made since (even a typo) or an artifact removed since made the replacement fail, which stopped every healthy
  worker too, or serve another configuration than its siblings. Replacements now read the text the server
  checked, and start on the shipped prior if the artifact no longer loads.
- A server process killed with SIGKILL (the OOM killer, ``kill -9``) left its workers serving, orphaned, on the
  port: a restarted gateway could not bind it, and a worker that died was not replaced. They now stop.
- While the workers drained after SIGTERM, the server process's copy of the listening socket kept accepting
  connections, each reset when it exited (a POST already sent: not retryable). They are now refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests.gateway.conftest import chat_reply
from tests.helpers.processes import GatewayProcess, one_model_config
from tests.helpers.upstream import Seen, Upstream

_NO_PROBES = {"health_probe_seconds": 3600}

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")


async def _slow_then_answer(request: Seen) -> web.Response:
    if request.method == "GET":
        return web.json_response({"data": []})
    await asyncio.sleep(float(request.json()["messages"][0]["content"]))
    return web.json_response(chat_reply("m", "hi"))


def _ask(url: str, seconds: float) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": str(seconds)}], "max_tokens": 5}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_a_worker_that_fails_to_start_fails_the_server(tmp_path: Path) -> None:
    config = one_model_config(
        tmp_path, "http://127.0.0.1:9", _NO_PROBES, router={"artifact": str(tmp_path / "no-such-artifact")}
    )
    gw = GatewayProcess(config, tmp_path / "gw.log", "--workers", "2")
    assert gw.proc.wait(90) == 3, gw.log()


async def test_a_replacement_worker_serves_what_its_siblings_serve(tmp_path: Path) -> None:
    async with Upstream(_slow_then_answer) as up:
        config = one_model_config(tmp_path, up.url, _NO_PROBES)
        gw = GatewayProcess(config, tmp_path / "gw.log", "--workers", "2")
        try:
            await asyncio.to_thread(gw.wait_ready)
            first = gw.worker_pids(2)
            config.write_text(config.read_text() + "server_typo: 1\n", encoding="utf-8")  # an edit for later
            os.kill(first[0], signal.SIGKILL)
            replaced = await asyncio.to_thread(gw.worker_pids, 3)
            assert len(replaced) == 2 and first[0] not in replaced
            answers = [await asyncio.to_thread(_ask, gw.base_url, 0) for _ in range(6)]
        finally:
            gw.stop()
    assert [a.status_code for a in answers] == [200] * 6
    assert "unknown key" not in gw.log()


async def test_new_connections_are_refused_while_the_workers_drain(tmp_path: Path) -> None:
    async with Upstream(_slow_then_answer) as up:
        gw = GatewayProcess(one_model_config(tmp_path, up.url, _NO_PROBES), tmp_path / "gw.log", "--workers", "2")
        try:
            await asyncio.to_thread(gw.wait_ready)
            await asyncio.to_thread(gw.worker_pids, 2)
            held = asyncio.ensure_future(asyncio.to_thread(_ask, gw.base_url, 4))
            await asyncio.sleep(1)
            gw.terminate()
            await asyncio.sleep(1)
            started = time.monotonic()
            with pytest.raises(httpx.ConnectError):
                await asyncio.to_thread(_ask, gw.base_url, 0)
            refused_after = time.monotonic() - started
            assert (await held).status_code == 200  # the request in flight was drained
        finally:
            gw.stop()
    assert refused_after < 1


def _listening(port: int) -> bool:
    wanted = f":{port:04X} "
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:] if Path(table).exists() else []
        if any(line.split()[1].endswith(wanted.strip()) and line.split()[3] == "0A" for line in lines):
            return True
    return False


def _running(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The processes of ``pids`` still running (not exited, nor a zombie) after at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in pids if _running(p)]


async def test_the_workers_stop_when_the_server_process_is_killed(tmp_path: Path) -> None:
    async with Upstream(_slow_then_answer) as up:
        gw = GatewayProcess(one_model_config(tmp_path, up.url, _NO_PROBES), tmp_path / "gw.log", "--workers", "2")
        try:
            await asyncio.to_thread(gw.wait_ready)
            workers = gw.worker_pids(2)
            assert (await asyncio.to_thread(_ask, gw.base_url, 0)).status_code == 200
            gw.kill()  # SIGKILL: the supervisor cannot stop its workers itself
            alive = await asyncio.to_thread(_wait_gone, workers, 20)
        finally:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert alive == [], gw.log()
    assert not _listening(gw.port)
    assert "this worker stops" in gw.log()
