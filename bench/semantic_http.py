"""The over-HTTP part of ``semantic_cache_eval.py``: the simulator and the gateway as processes, real sockets.

The gateway runs its default cache configuration (only ``redis_url``, a key prefix of its own, and one
route ``faq`` with ``semantic_cache: true`` are set). Requests use one keep-alive connection.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml

from bench.cache_latency import free_port, wait_http
from cache.semantic import encode_vector

ROOT = Path(__file__).resolve().parents[1]


def _body(system: str, question: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return {"model": "faq", "messages": messages, "temperature": 0, "max_tokens": 16}


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _wait_stored(client: httpx.Client, url: str, system: str, question: str) -> None:
    for _ in range(200):  # until the background write of the answer and its vector has landed
        r = client.post(url, json=_body(system, question), headers={"cache-control": "no-store"})
        if r.headers.get("x-gateway-cache") == "hit":
            return
        time.sleep(0.05)
    raise RuntimeError("the gateway did not store the answer")


def http_eval(pairs: list[dict[str, Any]], fill: dict[str, np.ndarray], redis_url: str | None) -> None:
    """Held-out pairs over HTTP, then hits in a bucket filled with ``fill`` (question -> vector) besides a seed."""
    redis_url = redis_url or "redis://127.0.0.1:6379/0"
    tmp = Path(tempfile.mkdtemp(prefix="semantic-eval-"))
    sim_port, gw_port = free_port(), free_port()
    sim_url, gw_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{gw_port}"
    prefix = f"gw:semeval:{os.getpid()}:"
    config = {
        "models": [{"name": "m", "backend": "openai", "base_url": f"{sim_url}/v1", "context_window": 4096}],
        "routes": {"faq": {"models": ["m"], "semantic_cache": True}},
        "cache": {"redis_url": redis_url, "key_prefix": prefix},
        "ledger": {"url": f"sqlite+aiosqlite:///{tmp}/ledger.db"},
        "server": {"log_level": "warning"},
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    sim_cmd = [sys.executable, "-m", "gateway.simulator", "--profile", "fast", "--port", str(sim_port)]
    sim_cmd += ["--log-level", "warning", "--model-name", "m", "--time-scale", "0.01"]
    gw_cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(tmp / "gateway.yaml"), "--port", str(gw_port)]
    sim = subprocess.Popen(sim_cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = subprocess.Popen(gw_cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "gw.log").open("wb"))
    try:
        wait_http(f"{sim_url}/health", sim)
        wait_http(f"{gw_url}/v1/models", gw, timeout=120)
        with httpx.Client(timeout=60) as client:
            cpu = psutil.Process(gw.pid)
            _pairs_over_http(client, f"{gw_url}/v1/chat/completions", pairs, cpu)
            _big_bucket(client, f"{gw_url}/v1/chat/completions", pairs, fill, redis_url, prefix, cpu)
    finally:
        for proc in (gw, sim):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        import redis

        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=prefix + "*", count=1000):
            r.delete(key)
        r.close()


def _cpu_ms(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system) * 1000


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"


def _pairs_over_http(client: httpx.Client, url: str, pairs: list[dict[str, Any]], cpu: psutil.Process) -> None:
    for i, p in enumerate(pairs):
        r = client.post(url, json=_body(f"FAQ desk {i}.", p["text_a"]))
        r.raise_for_status()
    _wait_stored(client, url, f"FAQ desk {len(pairs) - 1}.", pairs[-1]["text_a"])
    served: list[bool] = []
    hit_ms: list[float] = []
    miss_ms: list[float] = []
    hit_cpu: list[float] = []
    for i, p in enumerate(pairs):
        c0 = _cpu_ms(cpu)
        t0 = time.perf_counter()
        r = client.post(url, json=_body(f"FAQ desk {i}.", p["text_b"]))
        dt = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        hit = r.headers.get("x-gateway-cache") == "semantic-hit"
        served.append(hit)
        (hit_ms if hit else miss_ms).append(dt)
        if hit:
            hit_cpu.append(_cpu_ms(cpu) - c0)
    labels = np.array([p["label"] == 1 for p in pairs])
    s = np.array(served)
    tp = int((s & labels).sum())
    precision = tp / s.sum() if s.sum() else float("nan")
    print(f"\n== over HTTP: {len(pairs)} held-out Quora pairs, one bucket each (gateway + simulator, Redis) ==")
    print(f"  semantic hits {int(s.sum())}: precision {precision:.3f}, recall {tp / labels.sum():.3f}")
    print(
        f"  hit round trip: p50 {statistics.median(hit_ms):.2f} ms, p99 {_pct(hit_ms, 0.99):.2f} ms (n={len(hit_ms)})"
    )
    print(f"  gateway CPU per hit (all its threads): mean {statistics.mean(hit_cpu):.2f} ms")
    print(f"  miss round trip (simulator at time scale 0.01): p50 {statistics.median(miss_ms):.2f} ms; {_load()}")


def _big_bucket(
    client: httpx.Client,
    url: str,
    pairs: list[dict[str, Any]],
    fill: dict[str, np.ndarray],
    redis_url: str,
    prefix: str,
    cpu: psutil.Process,
) -> None:
    import redis

    system = "FAQ desk with a big bucket."
    seed = "What is the meaning of a semantic cache?"
    client.post(url, json=_body(system, seed)).raise_for_status()
    _wait_stored(client, url, system, seed)
    r = redis.Redis.from_url(redis_url)
    stream = entry = None
    for key in r.scan_iter(match=prefix + "vs:*", count=1000):
        rows: Any = r.xrange(key, count=2)
        if len(rows) == 1 and rows[0][1][b"q"].decode() == seed:
            stream, entry = key, rows[0][1][b"k"].decode()
    assert stream is not None and entry is not None, "the seed's bucket was not found"
    value = r.get(prefix + entry)
    assert value is not None
    pipe = r.pipeline(transaction=False)
    expires = f"{time.time() + 3600:.3f}"
    for i, (q, v) in enumerate(fill.items()):
        pipe.set(f"{prefix}e:fill{i}", value, ex=3600)
        pipe.xadd(stream, {"k": f"e:fill{i}", "v": encode_vector(v), "q": q, "x": expires}, maxlen=10_000)
    pipe.execute()
    size = r.xlen(stream)
    r.close()
    asks = [p["text_b"] for p in pairs if p["label"] == 1 and p["text_a"] in fill][:300]
    t0 = time.perf_counter()
    client.post(url, json=_body(system, asks[0]))
    first = (time.perf_counter() - t0) * 1000
    time.sleep(3)  # the rest of the bucket is read in the background: measure the steady state
    hit_ms: list[float] = []
    statuses: dict[str, int] = {}
    c0 = _cpu_ms(cpu)
    for q in asks:
        t0 = time.perf_counter()
        resp = client.post(url, json=_body(system, q), headers={"cache-control": "no-store"})
        dt = (time.perf_counter() - t0) * 1000
        status = resp.headers.get("x-gateway-cache", "?")
        statuses[status] = statuses.get(status, 0) + 1
        if status in ("semantic-hit", "hit"):
            hit_ms.append(dt)
    cpu_each = (_cpu_ms(cpu) - c0) / len(asks)
    print(f"\n== over HTTP: one bucket of {size} entries ==")
    print(f"  first request after the fill (starts reading 10,000 rows into the index): {first:.1f} ms")
    print(f"  {len(asks)} duplicates of cached questions asked {statuses}")
    print(
        f"  hit round trip: p50 {statistics.median(hit_ms):.2f} ms, p99 {_pct(hit_ms, 0.99):.2f} ms (n={len(hit_ms)})"
    )
    print(f"  gateway CPU per request (all its threads): mean {cpu_each:.2f} ms; {_load()}")
    exact_ms: list[float] = []
    c0 = _cpu_ms(cpu)
    for _ in range(len(asks)):  # the same path without the semantic stage, for comparison
        t0 = time.perf_counter()
        resp = client.post(url, json=_body(system, seed))
        exact_ms.append((time.perf_counter() - t0) * 1000)
        assert resp.headers.get("x-gateway-cache") == "hit"
    cpu_exact = (_cpu_ms(cpu) - c0) / len(asks)
    print(
        f"  exact hits, same bucket: p50 {statistics.median(exact_ms):.2f} ms, p99 {_pct(exact_ms, 0.99):.2f} ms, "
        f"gateway CPU {cpu_exact:.2f} ms per request; {_load()}"
    )
    _hits_between_writes(client, url, system, asks, cpu)


def _hits_between_writes(client: httpx.Client, url: str, system: str, asks: list[str], cpu: psutil.Process) -> None:
    """The full bucket as a busy FAQ sees it: each hit follows a miss whose answer is stored, so the store
    appends a row and trims its oldest, and the hit's lookup brings the mirror up to date first."""
    hit_ms: list[float] = []
    statuses: dict[str, int] = {}
    c0 = _cpu_ms(cpu)
    for i, q in enumerate(asks):
        miss = client.post(url, json=_body(system, f"Question {i} of {len(asks)} about the weather on day {i}?"))
        miss.raise_for_status()
        time.sleep(0.02)  # the answer and its vector are written in the background
        t0 = time.perf_counter()
        resp = client.post(url, json=_body(system, q), headers={"cache-control": "no-store"})
        dt = (time.perf_counter() - t0) * 1000
        status = resp.headers.get("x-gateway-cache", "?")
        statuses[status] = statuses.get(status, 0) + 1
        if status in ("semantic-hit", "hit"):
            hit_ms.append(dt)
    cpu_pair = (_cpu_ms(cpu) - c0) / len(asks)
    print(f"  the same {len(asks)} asks, each after a stored miss (a write into the full bucket): {statuses}")
    print(
        f"  hit round trip: p50 {statistics.median(hit_ms):.2f} ms, p99 {_pct(hit_ms, 0.99):.2f} ms (n={len(hit_ms)}); "
        f"gateway CPU per miss + ask {cpu_pair:.2f} ms; {_load()}"
    )
