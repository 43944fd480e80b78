"""CPU per upstream request of the gateway's HTTP clients: the built-in HTTP/1.1 client vs httpx (and aiohttp
when installed), against the simulator's ``fast`` profile on another core.

    .venv/bin/python bench/upstream_client.py [--n 4000] [--concurrency 16]

Each client sends the same non-streaming chat request over keep-alive connections and reads the whole
body; CPU time of this process (user + sys) per request is printed, best of three rounds, with the
ratio to the built-in client. The upstream runs pinned to core 0 and this process to core 1 where the
machine has two cores.
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from backends.h1 import H1Client
from backends.wire import HttpxUpstream, UpstreamHTTP

ROOT = Path(__file__).resolve().parents[1]
BODY = orjson.dumps({"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
HEADERS = {"content-type": "application/json"}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(name: str, one: Callable[[], Awaitable[None]], n: int, concurrency: int) -> float:
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


def via(client: UpstreamHTTP, url: str) -> Callable[[], Awaitable[None]]:
    async def one() -> None:
        response = await client.request("POST", url, headers=HEADERS, body=BODY, connect_timeout=5, read_timeout=30)
        orjson.loads(await response.read())

    return one


def main(n: int, concurrency: int) -> None:
    port = free_port()
    pin = ["taskset", "-c", "0"] if (os.cpu_count() or 1) > 1 else []
    sim = subprocess.Popen(
        [*pin, sys.executable, "-m", "gateway", "simulate", "--profile", "fast", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        asyncio.run(compare(f"http://127.0.0.1:{port}/v1/chat/completions", n, concurrency))
    finally:
        sim.terminate()
        sim.wait(5)


async def compare(url: str, n: int, concurrency: int) -> None:
    import httpx

    results: dict[str, float] = {}
    h1 = H1Client()
    results["builtin (backends.h1)"] = await measure("h1", via(h1, url), n, concurrency)
    await h1.aclose()
    hx = HttpxUpstream(httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=100)))
    results["httpx 0.28 (HttpxUpstream)"] = await measure("httpx", via(hx, url), n, concurrency)
    await hx.aclose()
    try:
        import aiohttp
    except ImportError:
        aiohttp = None  # type: ignore[assignment]
    if aiohttp is not None:
        async with aiohttp.ClientSession() as session:

            async def aio() -> None:
                async with session.post(url, data=BODY, headers=HEADERS) as r:
                    orjson.loads(await r.read())

            results[f"aiohttp {aiohttp.__version__}"] = await measure("aiohttp", aio, n, concurrency)
    base = results["builtin (backends.h1)"]
    print(f"{n} requests x3, {concurrency} concurrent, keep-alive; CPU of the client process per request")
    for name, us in results.items():
        print(f"  {name:28} {us:7.1f} us   x{us / base:4.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    main(args.n, args.concurrency)
