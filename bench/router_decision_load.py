"""Routing decision time of an adapted router, through the gateway, under concurrent load.

    .venv/bin/python bench/router_decision_load.py --router DIR --data prompts.jsonl [--n 1000] [--concurrency 8]
        [--semantic-cache]

Serves the gateway (uvicorn, in this process) with ``router.artifact: DIR`` and a ``learned`` route between two
simulated models on loopback, and sends ``--n`` chat requests (the ``prompt`` field of ``--data``, in turn)
``--concurrency`` at a time with the OpenAI SDK. The decision time is what the pipeline times as the decide
stage (``gateway_routing_decision_seconds``): waiting for the prompt's embedding when the semantic cache did not
compute it (the worker thread's queue included), then ``Router.plan``. Also printed: the event loop's longest
stall (a probe task that sleeps 1 ms and measures how late it wakes), which would show work blocking the loop.

``--separate-processes`` runs the two simulated backends (``python -m gateway.simulator``) and the load generator
in processes of their own, so the gateway's process has no other busy thread (as in a deployment): otherwise
their threads share the gateway's GIL, and work that releases it (numpy) can wait up to Python's 5 ms switch
interval to get it back.

``--semantic-cache`` turns the route's semantic cache on (in-process store): the cache embeds the prompt for its
lookup and the router reads that vector, so the decision itself only scores (an artifact that reads the static
vector, ``--vector minilm-static``, computes that one itself, on the event loop: ~0.1 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn

from gateway.app import create_app
from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from policies.router.adapt import recorded_vector


class Recorder:
    """Stands in for the decision-time histogram: keeps every observation; on the first one (in the gateway's
    event loop) it starts a probe of that loop's stalls."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.lags: list[float] = []
        self.stop = False
        self._probe: asyncio.Task[None] | None = None

    def observe(self, value: float) -> None:
        self.values.append(value)
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while not self.stop:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - t0 - 0.001)


def _serve(app: Any) -> tuple[uvicorn.Server, str]:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def _simulator_process(name: str) -> Iterator[str]:
    """``python -m gateway.simulator`` serving ``name`` on a free loopback port; its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [sys.executable, "-m", "gateway.simulator", "--profile", "fast", "--port", str(port)]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.Popen([*args, "--model-name", name, "--log-level", "warning"], cwd=root, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _load_child(base: str, prompts: list[str], n: int, concurrency: int, out: Any) -> None:
    out.put(asyncio.run(_load(base, prompts, n, concurrency)))


def _load_elsewhere(base: str, prompts: list[str], n: int, concurrency: int) -> float:
    """:func:`_load` in a process of its own; its elapsed seconds."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_load_child, args=(base, prompts, n, concurrency, out))
    child.start()
    elapsed = float(out.get())
    child.join()
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _load(base: str, prompts: list[str], n: int, concurrency: int) -> float:
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    queue = list(range(n))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            await client.chat.completions.create(
                model="smart",
                messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
                max_tokens=16,
                temperature=0,
            )

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--router", type=Path, required=True, help="adapted artifact directory")
    ap.add_argument("--data", type=Path, required=True, help="JSONL with 'prompt'")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--semantic-cache", action="store_true")
    ap.add_argument("--separate-processes", action="store_true", help="backends and load generator in other processes")
    ap.add_argument("--embed-timeout-ms", type=float, default=None, help="router.embed_timeout_ms (default: its)")
    args = ap.parse_args()
    prompts = [json.loads(x)["prompt"] for x in args.data.read_text(encoding="utf-8").splitlines() if x.strip()]

    with contextlib.ExitStack() as stack:
        if args.separate_processes:
            weak = stack.enter_context(_simulator_process("sim-weak"))
            strong = stack.enter_context(_simulator_process("sim-strong"))
        else:
            weak_srv, weak = _serve(create_simulator_app("fast", model_name="sim-weak"))
            strong_srv, strong = _serve(create_simulator_app("fast", model_name="sim-strong"))
            stack.callback(_stop, weak_srv)
            stack.callback(_stop, strong_srv)
        return _bench(args, prompts, weak, strong)


def _stop(server: uvicorn.Server) -> None:
    server.should_exit = True


def _bench(args: argparse.Namespace, prompts: list[str], weak: str, strong: str) -> int:
    def load(base: str, n: int) -> float:
        if args.separate_processes:
            return _load_elsewhere(base, prompts, n, args.concurrency)
        return asyncio.run(_load(base, prompts, n, args.concurrency))

    with tempfile.TemporaryDirectory() as tmp:
        models: list[dict[str, Any]] = [
            {"name": "weak", "backend": "openai", "base_url": weak + "/v1", "upstream_model": "sim-weak"},
            {"name": "strong", "backend": "openai", "base_url": strong + "/v1", "upstream_model": "sim-strong"},
        ]
        models[0].update({"input_cost_per_token": "0.0000001", "output_cost_per_token": "0.0000001", "quality": 6})
        models[1].update({"input_cost_per_token": "0.00003", "output_cost_per_token": "0.00006", "quality": 9})
        settings = settings_from_dict(
            {
                "models": models,
                "routes": {"smart": {"policy": "learned", "semantic_cache": args.semantic_cache}},
                "router": {"artifact": str(args.router)}
                | ({"embed_timeout_ms": args.embed_timeout_ms} if args.embed_timeout_ms else {}),
                "cache": {"enabled": args.semantic_cache, "redis_url": None},
                "ledger": {"url": f"sqlite+aiosqlite:///{tmp}/ledger.db"},
                "server": {"metrics_scrape_seconds": 3600},
            }
        )
        app = create_app(settings)
        gw_srv, base = _serve(app)
        gw = app.state.gateway
        recorder = Recorder()
        gw.metrics.decision_time = recorder
        got = {"vector": 0, "none": 0}
        inner = gw.pipeline._prompt_vector

        async def counted(ctx: Any, feats: Any) -> Any:
            vec = await inner(ctx, feats)
            got["vector" if vec is not None else "none"] += 1
            return vec

        gw.pipeline._prompt_vector = counted
        load(base, 50)  # warm-up
        recorder.values.clear()
        recorder.lags.clear()
        got.update(vector=0, none=0)
        elapsed = load(base, args.n)
        recorder.stop = True
        lags = list(recorder.lags)
        d = [v * 1000 for v in recorder.values]
        vector = recorded_vector(args.router)
        shared = args.semantic_cache and vector == "minilm"
        where = "shared with the semantic cache" if shared else "computed for the router (worker thread)"
        if vector == "minilm-static":
            where = "computed for the router (on the event loop)"
        where = f"{vector}, {where}"
        procs = "; backends and load generator in other processes" if args.separate_processes else ""
        print(
            f"{args.n} requests, concurrency {args.concurrency}, {args.n / elapsed:.0f} req/s; embedding: {where}{procs}"
        )
        print(
            f"decision ms: p50 {statistics.median(d):.3f}  p90 {pct(d, 0.9):.3f}  p99 {pct(d, 0.99):.3f}"
            f"  max {max(d):.3f}  (n={len(d)}; with the embedding: {got['vector']}, without (late or queue full):"
            f" {got['none']})"
        )
        if lags:
            ms = [v * 1000 for v in lags]
            print(f"event-loop stall ms (1 ms probe): p50 {statistics.median(ms):.3f}  p99 {pct(ms, 0.99):.3f}")
        gw_srv.should_exit = True
        time.sleep(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
