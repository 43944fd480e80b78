#!/usr/bin/env python3
"""Cache hit latency through the gateway over HTTP, against the direct upstream in the same run.

Starts the backend simulator (a realistic profile, default ``llama-2-7b``: 60 ms to the first token,
22 ms per token) and the gateway (``gateway serve``) as separate processes, then measures with one
keep-alive HTTP connection:

* direct: the simulator answering the request itself (what a cache hit saves);
* exact hit: the same deterministic request again through the gateway;
* semantic hit: a paraphrase of a cached question on a route with ``semantic_cache: true``;
* miss: a new question through the gateway, interleaved with the direct requests (same bodies), so the
  paired difference is the gateway's whole cost on a miss; the cache lookup alone is timed in process.

Then hit throughput at 32 connections with ``wrk`` (a Lua script posting the same body) when wrk is
installed, else with a Python asyncio client (which tops out at a few hundred requests/s here).

    .venv/bin/python bench/cache_latency.py [--redis redis://127.0.0.1:6379/0] [--profile llama-2-7b]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = {"role": "system", "content": "You are the help desk of an online shop. Answer briefly."}
QUESTION = "How do I reset my password?"
PARAPHRASE = "How can I reset my password?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def body(question: str, model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [SYSTEM, {"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }


def timed(client: httpx.Client, url: str, payload: dict[str, Any], n: int, expect: str | None) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post(url, json=payload)
        dt = time.perf_counter() - t0
        r.raise_for_status()
        if expect is not None and r.headers.get("x-gateway-cache") != expect:
            raise RuntimeError(f"expected x-gateway-cache: {expect}, got {r.headers.get('x-gateway-cache')}")
        out.append(dt * 1000)
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def row(name: str, xs: list[float], direct_p50: float) -> str:
    p50 = statistics.median(xs)
    return (
        f"{name:<14} n={len(xs):<4} p50 {p50:9.2f} ms   p90 {pct(xs, 0.9):9.2f} ms   p99 {pct(xs, 0.99):9.2f} ms"
        f"   p50/direct {p50 / direct_p50:8.4%}"
    )


def wrk_hits(base: str, payload: dict[str, Any], seconds: int, conns: int) -> str:
    lua = (
        'wrk.method = "POST"\n'
        'wrk.path = "/v1/chat/completions"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Cache-Control"] = "no-store"\n'
        f"wrk.body = {json.dumps(json.dumps(payload))}\n"
        "local bad = 0\n"
        "function response(status, headers, body) if status ~= 200 then bad = bad + 1 end end\n"
        "function done(summary, latency, requests)\n"
        '  io.write(string.format("WRK %d requests in %.2f s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, '
        'errors %d\\n", summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6), '
        "latency:percentile(50) / 1000, latency:percentile(99) / 1000, "
        "summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))\n"
        "end\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", f.name, base],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    return next((line for line in out.splitlines() if line.startswith("WRK")), out)


async def _py_hits(base: str, payload: dict[str, Any], seconds: int, conns: int) -> str:
    stop = time.perf_counter() + seconds
    lat: list[float] = []
    errors = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=payload, headers={"cache-control": "no-store"})
            lat.append((time.perf_counter() - t0) * 1000)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=conns)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(conns)))
        dt = time.perf_counter() - t0
    return (
        f"PY {len(lat)} requests in {dt:.2f} s: {len(lat) / dt:.0f} req/s, p50 {statistics.median(lat):.2f} ms, "
        f"p99 {pct(lat, 0.99):.2f} ms, errors {errors} (Python client, wrk not installed)"
    )


async def lookup_cost(redis_url: str | None) -> str:
    """Microseconds per CacheService.lookup on a hit and on a miss, without HTTP or the rest of the gateway."""
    from cache.memory import MemoryStore
    from cache.redis import RedisStore
    from cache.service import CacheService
    from gateway.config import CacheSettings
    from gateway.context import RequestContext
    from gateway.metrics import Metrics

    prefix = f"gw:bench:{os.getpid()}:lookup:"
    store = RedisStore(redis_url, prefix=prefix, timeout_s=1.0) if redis_url else MemoryStore()
    svc = CacheService(store, CacheSettings(timeout_ms=1000), Metrics())
    await svc.start()

    def ctx(question: str) -> RequestContext:
        c = RequestContext(request_id="r", endpoint="chat", body=body(question, "llama", 32), requested_model="llama")
        c.chosen_model = "llama"
        return c

    first = ctx(QUESTION)
    await svc.lookup(first)
    choice = {"index": 0, "message": {"role": "assistant", "content": "x " * 100}, "finish_reason": "stop"}
    svc.store(first, {"object": "chat.completion", "choices": [choice]})
    await svc.flush()
    out = []
    for label, question in (("hit", QUESTION), ("miss", None)):
        times = []
        for i in range(2000):
            c = ctx(question or f"{QUESTION} {i}")
            t0 = time.perf_counter()
            await svc.lookup(c)
            times.append((time.perf_counter() - t0) * 1e6)
            assert c.cache_status == label
        out.append(f"{label} p50 {statistics.median(times):.0f} us, p90 {pct(times, 0.9):.0f} us")
    await svc.aclose()
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
    return "; ".join(out)


def served(gw_url: str) -> dict[str, float]:
    """gateway_requests_total summed by cache status."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{gw_url}/metrics").text.splitlines():
        if line.startswith("gateway_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            status = labels.split('cache="', 1)[1].split('"', 1)[0]
            out[status] = out.get(status, 0.0) + float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="llama-2-7b", help="simulator profile of the upstream")
    ap.add_argument("--redis", default=None, help="Redis URL for the cache (default: in-process store)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--direct", type=int, default=10, help="direct upstream requests")
    ap.add_argument("--hits", type=int, default=300, help="sequential exact hits")
    ap.add_argument("--semantic", type=int, default=100, help="sequential semantic hits")
    ap.add_argument("--seconds", type=int, default=10, help="duration of each throughput run")
    ap.add_argument("--semantic-connections", type=int, default=8, help="wrk connections for semantic hits")
    ap.add_argument("--timeout-ms", type=float, default=None, help="cache.timeout_ms (default: the config's)")
    ap.add_argument("--keep-log", action="store_true", help="print the gateway's log at the end")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    sim_port, gw_port = free_port(), free_port()
    sim_url, gw_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{gw_port}"
    cache: dict[str, Any] = {"ttl_seconds": 3600, "semantic_threshold": 0.85}
    if args.timeout_ms is not None:
        cache["timeout_ms"] = args.timeout_ms
    if args.redis:
        cache |= {"redis_url": args.redis, "key_prefix": f"gw:bench:{os.getpid()}:"}
    config = {
        "models": [
            {
                "name": "llama",
                "backend": "openai",
                "base_url": f"{sim_url}/v1",
                "gpu_hour_usd": 1.0,
                "tokens_per_second": 500,
                "context_window": 4096,
            }
        ],
        "routes": {"helpdesk": {"models": ["llama"], "semantic_cache": True}},
        "cache": cache,
        "ledger": {"url": f"sqlite+aiosqlite:///{tmp}/ledger.db"},
        "server": {"log_level": "warning"},
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    sim_cmd = [sys.executable, "-m", "gateway.simulator", "--profile", args.profile, "--port", str(sim_port)]
    sim_cmd += ["--log-level", "warning", "--model-name", "llama"]
    gw_cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(tmp / "gateway.yaml"), "--port", str(gw_port)]
    gw_log = (tmp / "gateway.log").open("wb")
    sim = subprocess.Popen(sim_cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = subprocess.Popen(gw_cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=gw_log)
    try:
        wait_http(f"{sim_url}/health", sim)
        wait_http(f"{gw_url}/v1/models", gw)
        store = f"Redis {args.redis}" if args.redis else "in-process store"
        print(f"upstream: simulator profile '{args.profile}', max_tokens {args.max_tokens}; cache: {store}")
        with httpx.Client(timeout=60) as client:
            # direct and miss interleaved, same bodies: the pair's difference is the gateway's own cost
            direct: list[float] = []
            misses: list[float] = []
            for i in range(args.direct):
                fresh = body(f"Question {i}: {QUESTION}", "llama", args.max_tokens)
                direct += timed(client, f"{sim_url}/v1/chat/completions", fresh, 1, None)
                misses += timed(client, f"{gw_url}/v1/chat/completions", fresh, 1, "miss")
            chat = f"{gw_url}/v1/chat/completions"
            exact = body(QUESTION, "llama", args.max_tokens)
            timed(client, chat, exact, 1, "miss")
            time.sleep(0.2)  # the background write
            hits = timed(client, chat, exact, args.hits, "hit")
            semantic = body(QUESTION, "helpdesk", args.max_tokens)
            timed(client, chat, semantic, 1, "miss")
            para = body(PARAPHRASE, "helpdesk", args.max_tokens)
            for _ in range(40):  # until the background write (answer + vector) has landed
                probe = client.post(chat, json=para, headers={"cache-control": "no-store"})
                if probe.headers.get("x-gateway-cache") == "semantic-hit":
                    break
                time.sleep(0.25)
            sem = timed(client, chat, para, args.semantic, "semantic-hit")
        d50 = statistics.median(direct)
        print(row("direct", direct, d50))
        print(row("exact hit", hits, d50))
        print(row("semantic hit", sem, d50))
        print(row("miss", misses, d50))
        print(
            "miss - direct, paired (p50): "
            f"{statistics.median([m - d for d, m in zip(direct, misses, strict=True)]):+.2f} ms "
            "(the whole gateway on a miss; the simulator jitters +-10%)"
        )
        print("cache lookup alone, in process (2000 each):", asyncio.run(lookup_cost(args.redis)))
        tool = "wrk" if shutil.which("wrk") else "python"
        print(f"hit throughput, {args.seconds} s per run ({tool}; Cache-Control: no-store, so a miss stays a miss):")
        for name, payload, conns in (("exact", exact, 32), ("semantic", para, args.semantic_connections)):
            before = served(gw_url)
            if tool == "wrk":
                line = wrk_hits(gw_url, payload, args.seconds, conns)
            else:
                line = asyncio.run(_py_hits(gw_url, payload, args.seconds, conns))
            after = served(gw_url)
            counts = {k: after[k] - before.get(k, 0.0) for k in sorted(after)}
            outcome = ", ".join(f"{k} {v:.0f}" for k, v in counts.items() if v > 0)
            print(f"  {name:<9} {conns} connections: {line}\n            served: {outcome}")
        totals = ", ".join(f"{k} {v:.0f}" for k, v in sorted(served(gw_url).items()))
        print(f"gateway_requests_total by cache status over the whole run: {totals}")
    finally:
        for p in (gw, sim):
            p.terminate()
            p.wait(10)
        gw_log.close()
        if args.redis:
            import redis

            rc = redis.Redis.from_url(args.redis)
            keys = list(rc.scan_iter(match=f"{cache['key_prefix']}*", count=500))
            if keys:
                rc.delete(*keys)
            rc.close()
        if args.keep_log:
            print(f"gateway log:\n{(tmp / 'gateway.log').read_text(errors='replace')[-4000:]}")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
