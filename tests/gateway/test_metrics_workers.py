"""Over sockets: ``gateway serve --workers 3`` answers ``/metrics`` with the sum of every worker's series.

Each uvicorn worker used to answer ``/metrics`` from its own registry: after 100 requests on 4 workers, ten
scrapes read ``gateway_requests_total`` as 16, 41, 16, 16, ... (Prometheus takes every drop for a counter
reset). The workers now keep their series in prometheus_client's multiprocess files and every scrape, whichever
worker answers it, reads them all. A worker killed with SIGKILL leaves its counts in the sum (counters never
go down) and its live gauges (requests in flight) out of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import chat_reply
from tests.helpers.processes import GatewayProcess, one_model_config
from tests.helpers.upstream import Seen, Upstream

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")

WORKERS = 3
REQUESTS = 60
HELD = 9
#: Scrapes asked for at once, each over its own connection (one at a time, the same worker tends to answer).
AT_ONCE = 4


def _samples(text: str) -> dict[str, float]:
    """Every sample's value summed over its labels, by sample name (``le`` buckets kept apart)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name + (f"{{le={s.labels['le']}}}" if "le" in s.labels else "")
            out[name] = out.get(name, 0.0) + s.value
    return out


async def _scrape(url: str, n: int = AT_ONCE) -> list[dict[str, float]]:
    async def one() -> dict[str, float]:
        async with httpx.AsyncClient(timeout=10) as client:  # a new connection: any worker may take it
            answer = await client.get(f"{url}/metrics")
        assert answer.status_code == 200, answer.text
        return _samples(answer.text)

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _post(url: str, content: str) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 5}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{url}/v1/chat/completions", json=body)


def _socket_owner(local_ports: set[int], pids: list[int]) -> dict[int, int]:
    """Which of ``pids`` holds the TCP socket bound to each of ``local_ports`` on 127.0.0.1 (a count per pid)."""
    inodes: dict[str, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        port = int(fields[1].split(":")[1], 16)
        if port in local_ports:
            inodes[fields[9]] = port
    held: dict[int, int] = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held[pid] = held.get(pid, 0) + 1
    return held


def _live_gauge_files(directory: str, pid: int) -> list[str]:
    return [f for f in os.listdir(directory) if f.startswith("gauge_live") and f.endswith(f"_{pid}.db")]


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _multiproc_dir(pid: int) -> str | None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for item in environ:
        if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return item.split(b"=", 1)[1].decode()
    return None


async def test_every_worker_reports_every_workers_requests(tmp_path: Path) -> None:
    tmp = tmp_path
    release = asyncio.Event()
    held: list[Seen] = []

    async def handler(seen: Seen) -> web.StreamResponse:
        if seen.method != "POST":  # the gateway's health checks
            return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})
        if "hold" in seen.json()["messages"][0]["content"]:
            held.append(seen)
            await release.wait()
        return web.json_response(chat_reply("m"))

    async with Upstream(handler) as upstream:
        gw = GatewayProcess(one_model_config(tmp, upstream.url), tmp / "gateway.log", "--workers", str(WORKERS))
        try:
            await asyncio.to_thread(gw.wait_ready, 90)
            pids = await asyncio.to_thread(gw.worker_pids, WORKERS)
            assert len(pids) == WORKERS, gw.log()
            directory = _multiproc_dir(pids[0])

            answers = await asyncio.gather(*(_post(gw.base_url, f"question {i}") for i in range(REQUESTS)))
            assert [a.status_code for a in answers] == [200] * REQUESTS

            # Counters and histograms: exact in every scrape, whichever worker answers it.
            scrapes = [s for _ in range(4) for s in await _scrape(gw.base_url)]
            requests = [s.get("gateway_requests_total", 0.0) for s in scrapes]
            latency = [s.get("gateway_backend_latency_seconds_count", 0.0) for s in scrapes]
            assert requests == [REQUESTS] * len(scrapes), f"gateway_requests_total by scrape: {requests}"
            assert latency == [REQUESTS] * len(scrapes), f"latency histogram count by scrape: {latency}"
            # The routing-decision histogram (observed without prometheus_client, published every second).
            await asyncio.sleep(1.5)
            decisions = [s.get("gateway_routing_decision_seconds_count", 0.0) for s in await _scrape(gw.base_url, 8)]
            assert decisions == [REQUESTS] * 8, f"decision histogram count by scrape: {decisions}"
            for s in scrapes:
                assert not any("pid" in name for name in s)

            # Requests in flight: the sum over the workers.
            holding = [asyncio.create_task(_post(gw.base_url, f"hold {i}")) for i in range(HELD)]
            deadline = time.monotonic() + 20
            while len(held) < HELD:
                assert time.monotonic() < deadline, f"{len(held)} of {HELD} requests reached the upstream"
                await asyncio.sleep(0.05)
            in_flight = await _wait_gauge(gw.base_url, "gateway_backend_in_flight", HELD)
            assert in_flight == [HELD] * AT_ONCE

            # SIGKILL the worker holding the most of them: its counts stay, its in-flight requests leave the sum.
            ports = {seen.request.transport.get_extra_info("peername")[1] for seen in held}  # type: ignore[union-attr]
            owners = _socket_owner(ports, pids)
            victim, lost = max(owners.items(), key=lambda kv: kv[1])
            assert sum(owners.values()) == HELD, owners
            os.kill(victim, signal.SIGKILL)
            # the killed worker's clients lose their connection; the others are still held by the upstream
            deadline = time.monotonic() + 20
            while sum(1 for t in holding if t.done()) < lost:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            failed = [t for t in holding if t.done()]
            assert len(failed) == lost and all(t.exception() is not None for t in failed)
            during = []
            for _ in range(4):
                during += await _scrape(gw.base_url)
            assert [s.get("gateway_requests_total", 0.0) for s in during] == [REQUESTS] * len(during)
            await asyncio.to_thread(gw.worker_pids, WORKERS + 1)  # uvicorn started a replacement
            in_flight = await _wait_gauge(gw.base_url, "gateway_backend_in_flight", HELD - lost)
            assert in_flight == [HELD - lost] * AT_ONCE
            assert directory is not None, "the workers were given no PROMETHEUS_MULTIPROC_DIR"
            assert not _live_gauge_files(directory, victim)  # taken out of the sum at a scrape

            release.set()
            rest = [await t for t in holding if t not in failed]
            assert [r.status_code for r in rest] == [200] * (HELD - lost)
            after = [s for _ in range(4) for s in await _scrape(gw.base_url)]
            total = REQUESTS + HELD - lost
            assert [s.get("gateway_requests_total", 0.0) for s in after] == [total] * len(after)
            assert [s.get("gateway_backend_latency_seconds_count", 0.0) for s in after] == [total] * len(after)
            assert await _wait_gauge(gw.base_url, "gateway_backend_in_flight", 0) == [0] * AT_ONCE
            # Published every second by each worker, the killed one's included up to its end: every request routed
            # was timed (the killed worker's held ones too), and every one answered was written to the ledger.
            name = "gateway_routing_decision_seconds_count"
            assert await _wait_gauge(gw.base_url, name, REQUESTS + HELD) == [REQUESTS + HELD] * AT_ONCE
            assert await _wait_gauge(gw.base_url, "gateway_ledger_written_rows_total", total) == [total] * AT_ONCE
        finally:
            release.set()
            code = await asyncio.to_thread(gw.stop)
        assert code in (0, -signal.SIGTERM), gw.log()
        assert directory is not None and not _exists(directory), "the metrics directory outlived the server"


async def _wait_gauge(url: str, name: str, expected: float, timeout_s: float = 15.0) -> list[float]:
    """The sample's value (summed over labels) in ``AT_ONCE`` scrapes, once they all read ``expected`` (each
    worker publishes its gauges and own collectors every second), or the last ones read when that does not happen
    in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = [s.get(name, 0.0) for s in await _scrape(url)]
        if values == [expected] * len(values) or time.monotonic() > deadline:
            return values
        await asyncio.sleep(0.2)
