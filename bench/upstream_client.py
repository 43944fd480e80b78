"""CPU and latency per upstream request of HTTP client configurations: aiohttp (as the gateway's backends
configure it, and variants) and httpx, against an upstream on the other core.

    .venv/bin/python bench/upstream_client.py [--n 4000] [--concurrency 16] [--seq 2000] [--url URL]

Without ``--url`` it starts ``gateway simulate --profile fast`` pinned to core 0 (this process goes to core
1 where the machine has two cores); ``--url`` names an upstream already running instead (for example the
shared harness's ``upstream.py``, which costs far less CPU per request than the simulator).

Each client sends the same non-streaming chat request over keep-alive connections and reads the whole
body. Two figures per client:

* CPU of this process (user + sys) per request with ``--concurrency`` requests in flight, best of three
  rounds of ``--n`` requests;
* wall-clock latency p50 and p99 of ``--seq`` sequential requests on one connection (after a warm-up),
  which includes the upstream's own time: compare clients with each other, not with zero.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import httpx
import orjson

from backends.http import build_session

BODY = orjson.dumps({"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}

Send = Callable[[], Awaitable[None]]


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def cpu_per_request(one: Send, n: int, concurrency: int) -> float:
    """Microseconds of this process's CPU per request, best of three rounds."""
    for _ in range(200):
        await one()
    best = float("inf")
    for _ in range(3):

        async def worker() -> None:
            for _ in range(n // concurrency):
                await one()

        t0 = cpu_s()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        best = min(best, (cpu_s() - t0) / n * 1e6)
    return best


async def latency(one: Send, n: int) -> tuple[float, float]:
    """p50 and p99 in milliseconds of ``n`` sequential requests."""
    for _ in range(100):
        await one()
    samples: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await one()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def aiohttp_sender(session: aiohttp.ClientSession, url: str, **kw: object) -> Send:
    async def one() -> None:
        async with session.post(url, data=BODY, headers=HEADERS, **kw) as r:  # type: ignore[arg-type]
            orjson.loads(await r.read())

    return one


def httpx_sender(client: httpx.AsyncClient, url: str) -> Send:
    async def one() -> None:
        r = await client.post(url, content=BODY, headers=HEADERS)
        orjson.loads(r.content)

    return one


@asynccontextmanager
async def gateway_aiohttp(url: str) -> AsyncIterator[Send]:
    """The session the gateway builds (backends.http.build_session), used as the backends use it."""
    session = build_session(max_connections=1000, keepalive_seconds=30)
    timeout = aiohttp.ClientTimeout(total=600, connect=5, sock_read=60)
    try:
        yield aiohttp_sender(session, url, timeout=timeout)
    finally:
        await session.close()


@asynccontextmanager
async def plain_aiohttp(url: str, **session_kw: object) -> AsyncIterator[Send]:
    async with aiohttp.ClientSession(**session_kw) as session:  # type: ignore[arg-type]
        yield aiohttp_sender(session, url)


@asynccontextmanager
async def plain_httpx(url: str) -> AsyncIterator[Send]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=100), timeout=60) as client:
        yield httpx_sender(client, url)


def clients(url: str) -> dict[str, Callable[[], AbstractAsyncContextManager[Send]]]:
    return {
        f"aiohttp {aiohttp.__version__}, gateway's session": lambda: gateway_aiohttp(url),
        "aiohttp, default ClientSession": lambda: plain_aiohttp(url),
        "aiohttp, trust_env=True": lambda: plain_aiohttp(url, trust_env=True),
        f"httpx {httpx.__version__}, default AsyncClient": lambda: plain_httpx(url),
    }


async def compare(url: str, n: int, concurrency: int, seq: int) -> None:
    print(f"CPU per request: {n} requests x3, {concurrency} concurrent; latency: {seq} sequential, one connection")
    print(f"  {'client':44} {'CPU us/req':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, make in clients(url).items():
        async with make() as one:
            cpu = await cpu_per_request(one, n, concurrency)
        async with make() as one:  # a fresh pool: one connection for the sequential run
            p50, p99 = await latency(one, seq)
        print(f"  {name:44} {cpu:10.1f} {p50:8.3f} {p99:8.3f}")


def wait_for_port(port: int) -> None:
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def main(url: str | None, n: int, concurrency: int, seq: int) -> None:
    two_cores = (os.cpu_count() or 1) > 1
    sim: subprocess.Popen[bytes] | None = None
    if url is None:
        port = free_port()
        pin = ["taskset", "-c", "0"] if two_cores else []
        sim = subprocess.Popen(
            [*pin, sys.executable, "-m", "gateway", "simulate", "--profile", "fast", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_for_port(port)
    if two_cores:
        os.sched_setaffinity(0, {1})
    try:
        import uvloop

        uvloop.run(compare(url, n, concurrency, seq))
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(5)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--url", help="an upstream's chat completions URL (default: start the simulator)")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2000)
    args = ap.parse_args()
    main(args.url, args.n, args.concurrency, args.seq)
