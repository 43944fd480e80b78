"""Soak benchmark (not a test): many concurrent streaming clients against a ``gateway serve`` process in front
of simulated backends, for minutes; reports errors, throughput, TTFT and the gateway's memory over time.

    python bench/soak.py [--duration 180] [--clients 200] [--max-tokens 16] [--out soak.json]
                         [--slow-clients 20] [--idle-clients 20] [--api chat|responses|messages]
                         [--ledger-url postgresql+asyncpg://...] [--keys 20]

What runs:
* ``--sims`` simulator processes (``python -m gateway.simulator --profile fast``, slowed by ``--time-scale``:
  20 ms to the first token, then 4 ms per token by default), each serving one model;
* the gateway as its own process (``gateway serve``; its SQLite ledger on, its cache off so every request is
  proxied), pinned to ``--gateway-cpus`` with ``taskset`` when available; the simulators and this load
  generator go to ``--other-cpus``;
* ``--clients`` keep-alive connections, each sending streaming requests (``model: auto``, routed between the
  simulated models) back to back and reading every event to the stream's end: chat completions (up to
  ``[DONE]``), or with ``--api`` the Responses API (up to ``response.completed``/``incomplete``; each response
  stored, the default, unless ``--no-store``) or the Anthropic Messages API (up to ``message_stop``).

``--ledger-url`` puts the ledger in another database (the tables are created there; use a throwaway one);
``--keys N`` turns virtual keys on (a master key for the gateway, N keys with a budget and limits whose counters
live in ``--redis-url`` under a private prefix, deleted afterwards), the clients sending them in turn.

``--slow-clients`` connections trickle a request head (one byte every ``--trickle-every`` seconds) and
``--idle-clients`` connections send nothing; each reconnects when the gateway closes it (its head deadline,
``server.head_timeout_seconds``). They are counted apart: only the normal clients' errors count.

An error is anything but a 200 stream of content with the API's proper end (an SSE error event, a missing
end, another status, a connection error, or a request over ``--request-timeout``).
The gateway's RSS is sampled after start-up, every ``--sample-every`` seconds and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *cmd]
    return cmd


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


@dataclass
class Window:
    """What happened since the last sample."""

    done: int = 0
    errors: int = 0
    ttft_ms: list[float] = field(default_factory=list)


@dataclass
class Stats:
    started: int = 0
    done: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    window: Window = field(default_factory=Window)


@dataclass(frozen=True)
class Api:
    """One front door's streaming request and how its stream reads: which event ends it properly, which reports
    an error, which carries the first content."""

    path: str
    ends: tuple[bytes, ...]
    errors: tuple[bytes, ...]
    content: bytes

    def body(self, max_tokens: int, store: bool) -> bytes:
        prompt = "Write a short note about load testing."
        if self.path == "/v1/responses":
            doc: dict[str, Any] = {"input": prompt, "max_output_tokens": max_tokens, "store": store}
        else:
            doc = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        return json.dumps({"model": "auto", "stream": True, **doc}).encode()

    def first_content(self, event: bytes) -> bool:
        if self.path == "/v1/chat/completions":
            return b'"content":"' in event and b'"content":""' not in event
        return event.startswith(self.content)


APIS = {
    "chat": Api("/v1/chat/completions", (b"data: [DONE]",), (b'data: {"error"',), b""),
    "responses": Api(
        "/v1/responses",
        (b"event: response.completed\n", b"event: response.incomplete\n"),
        (b"event: error\n", b"event: response.failed\n"),
        b"event: response.output_text.delta\n",
    ),
    "messages": Api("/v1/messages", (b"event: message_stop\n",), (b"event: error\n",), b"event: content_block_delta\n"),
}


async def client(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    api: Api,
    stats: Stats,
    stop: asyncio.Event,
    limit_s: float,
    key: str | None = None,
) -> None:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    while not stop.is_set():
        stats.started += 1
        t0 = time.perf_counter()
        ttft: float | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(limit_s):
                async with session.post(url, data=body, headers=headers) as r:
                    if r.status != 200:
                        error = f"http_{r.status}"
                        await r.read()
                    else:
                        buf = b""
                        done = False
                        async for chunk in r.content.iter_any():
                            buf += chunk
                            while b"\n\n" in buf:
                                event, buf = buf.split(b"\n\n", 1)
                                if event.startswith(api.ends):
                                    done = True
                                elif event.startswith(api.errors):
                                    error = "sse_error_event"
                                elif ttft is None and api.first_content(event):
                                    ttft = time.perf_counter() - t0
                        if error is None and not done:
                            error = "no_done"
                        if error is None and ttft is None:
                            error = "no_content"
        except TimeoutError:
            error = "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
        total = time.perf_counter() - t0
        stats.done += 1
        stats.window.done += 1
        if error is not None:
            stats.errors[error] += 1
            stats.window.errors += 1
            continue
        assert ttft is not None
        stats.ttft_ms.append(ttft * 1000)
        stats.window.ttft_ms.append(ttft * 1000)
        stats.total_ms.append(total * 1000)


async def misbehaving(
    host: str, port: int, trickle_every: float | None, stop: asyncio.Event, cut: Counter[str]
) -> None:
    """A client that trickles a request head (``trickle_every`` s per byte) or, with None, sits idle; it
    reconnects whenever the gateway closes it, and counts those closes in ``cut``."""
    kind = "idle" if trickle_every is None else "slow"
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n" + b"x: y" * 500
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        closed = asyncio.ensure_future(reader.read())
        try:
            for i in range(len(head)):
                if stop.is_set() or closed.done():
                    break
                if trickle_every is not None:
                    writer.write(head[i : i + 1])
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(closed), trickle_every or 1.0)
            if closed.done():
                cut[kind] += 1
        except OSError:
            cut[kind] += 1
        finally:
            closed.cancel()
            writer.close()


def rss_mib(proc: psutil.Process) -> float:
    """RSS of the gateway process and its children (uvicorn with workers), MiB."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / 2**20


async def create_keys(base_url: str, master: str, n: int) -> list[str]:
    """``n`` virtual keys with generous limits and a budget (so every request runs the limits' Redis path)."""
    keys = []
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {master}"}) as session:
        for i in range(n):
            doc = {"name": f"soak-{i}", "team": f"team-{i % 3}", "budget_usd": 1000, "rpm": 10**6, "tpm": 10**9}
            async with session.post(f"{base_url}/admin/keys", json=doc) as r:
                if r.status != 201:
                    raise RuntimeError(f"creating a key: {r.status} {await r.text()}")
                keys.append((await r.json())["key"])
    return keys


async def drive(args: argparse.Namespace, base_url: str, gw: psutil.Process, master: str | None) -> dict[str, Any]:
    keys: list[str | None] = [None]
    if master is not None:
        keys = list(await create_keys(base_url, master, args.keys))
    api = APIS[args.api]
    body = api.body(args.max_tokens, not args.no_store)
    stats = Stats()
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=args.clients, limit_per_host=args.clients, force_close=False)
    samples: list[dict[str, Any]] = []
    rss_start = rss_mib(gw)
    print(
        f"gateway RSS after start-up: {rss_start:.1f} MiB; {args.clients} clients for {args.duration:.0f} s", flush=True
    )
    print(
        f"{'t s':>6} {'requests':>9} {'req/s':>7} {'errors':>6} {'TTFT p50':>9} {'TTFT p99':>9} {'RSS MiB':>8}",
        flush=True,
    )
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [
            asyncio.create_task(
                client(session, base_url + api.path, body, api, stats, stop, args.request_timeout, keys[i % len(keys)])
            )
            for i in range(args.clients)
        ]
        host, port = base_url.removeprefix("http://").split(":")
        cut: Counter[str] = Counter()
        tasks += [
            asyncio.create_task(misbehaving(host, int(port), args.trickle_every, stop, cut))
            for _ in range(args.slow_clients)
        ]
        tasks += [asyncio.create_task(misbehaving(host, int(port), None, stop, cut)) for _ in range(args.idle_clients)]
        t0 = time.monotonic()
        last = t0
        while True:
            remaining = args.duration - (time.monotonic() - t0)
            await asyncio.sleep(max(0.0, min(args.sample_every, remaining)))
            now = time.monotonic()
            w, stats.window = stats.window, Window()
            sample = {
                "t_s": round(now - t0, 1),
                "requests": stats.done,
                "req_per_s": round(w.done / (now - last), 1),
                "errors": w.errors,
                "ttft_p50_ms": percentile(w.ttft_ms, 0.5),
                "ttft_p99_ms": percentile(w.ttft_ms, 0.99),
                "rss_mib": round(rss_mib(gw), 1),
            }
            samples.append(sample)
            last = now
            print(
                f"{sample['t_s']:>6.0f} {sample['requests']:>9} {sample['req_per_s']:>7.0f} {sample['errors']:>6}"
                f" {sample['ttft_p50_ms'] or 0:>9.1f} {sample['ttft_p99_ms'] or 0:>9.1f} {sample['rss_mib']:>8.1f}",
                flush=True,
            )
            if now - t0 >= args.duration:
                break
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
    await asyncio.sleep(1.0)  # let the gateway settle (ledger flush) before the last reading
    rss_end = rss_mib(gw)
    return {
        "api": args.api,
        "ledger": "sqlite" if args.ledger_url is None else args.ledger_url.split(":")[0],
        "keys": args.keys,
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "requests": stats.done,
        "errors": sum(stats.errors.values()),
        "errors_by_kind": dict(stats.errors),
        "throughput_req_per_s": round(stats.done / elapsed, 1),
        "ttft_p50_ms": percentile(stats.ttft_ms, 0.5),
        "ttft_p99_ms": percentile(stats.ttft_ms, 0.99),
        "total_p50_ms": percentile(stats.total_ms, 0.5),
        "total_p99_ms": percentile(stats.total_ms, 0.99),
        "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_max_mib": max([s["rss_mib"] for s in samples] + [rss_end]),
        "slow_clients": args.slow_clients,
        "idle_clients": args.idle_clients,
        "misbehaving_cut_off": dict(cut),
        "samples": samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    ap.add_argument("--clients", type=int, default=200, help="concurrent streaming clients")
    ap.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (one SSE event each)")
    ap.add_argument("--sims", type=int, default=2, help="simulated backends (one model each)")
    ap.add_argument("--time-scale", type=float, default=20.0, help="the fast profile's delays x this")
    ap.add_argument("--sample-every", type=float, default=30.0)
    ap.add_argument("--request-timeout", type=float, default=60.0)
    ap.add_argument("--gateway-cpus", default="1", help="taskset CPU list for the gateway ('' = no pinning)")
    ap.add_argument("--other-cpus", default="0", help="taskset CPU list for simulators and this load generator")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--slow-clients", type=int, default=0, help="connections trickling a request head")
    ap.add_argument("--idle-clients", type=int, default=0, help="connections that send nothing")
    ap.add_argument("--trickle-every", type=float, default=0.5, help="seconds per byte of a slow client")
    ap.add_argument("--api", choices=sorted(APIS), default="chat", help="the front door the clients stream from")
    ap.add_argument("--no-store", action="store_true", help="Responses API: store: false (nothing kept)")
    ap.add_argument("--ledger-url", default=None, help="the ledger's database (default: SQLite in a temp dir)")
    ap.add_argument("--keys", type=int, default=0, help="virtual keys (auth on; limits and budgets in Redis)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="with --keys: the limits' Redis")
    args = ap.parse_args()

    if args.other_cpus and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(0, {int(c) for c in args.other_cpus.split(",")})
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        models = []
        for i in range(args.sims):
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "gateway.simulator",
                "--profile",
                "fast",
                "--port",
                str(port),
                "--time-scale",
                str(args.time_scale),
                "--max-concurrency",
                "100000",
                "--model-name",
                f"sim-{i}",
                "--log-level",
                "warning",
            ]
            log = (tmp / f"sim-{i}.log").open("wb")
            procs.append(subprocess.Popen(pinned(cmd, args.other_cpus), env=env, stdout=log, stderr=subprocess.STDOUT))
            wait_http(f"http://127.0.0.1:{port}/health", procs[-1])
            models.append(
                {
                    "name": f"sim-{i}",
                    "backend": "openai",
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "upstream_model": f"sim-{i}",
                    "quality": 7 + i,
                    "input_cost_per_token": "0.000001",
                    "output_cost_per_token": "0.000002",
                }
            )
        config = {
            "models": models,
            "routes": {"auto": {"models": [m["name"] for m in models], "policy": "cost"}},
            "cache": {"enabled": False},
            "server": {"log_level": "warning"},
            "ledger": {"url": args.ledger_url or f"sqlite+aiosqlite:///{tmp / 'ledger.db'}"},
        }
        master: str | None = None
        redis_prefix = f"gw:soak:{os.getpid()}:"
        if args.keys:
            master = "sk-gw-soak-master"
            env["GATEWAY_MASTER_KEY"] = master
            config["auth"] = {"redis_url": args.redis_url, "redis_prefix": redis_prefix}
        (tmp / "gateway.json").write_text(json.dumps(config))  # JSON is YAML
        port = free_port()
        gateway_bin = str(Path(sys.executable).with_name("gateway"))
        cmd = [gateway_bin, "serve", "--config", str(tmp / "gateway.json"), "--port", str(port)]
        log = (tmp / "gateway.log").open("wb")
        gw_proc = subprocess.Popen(pinned(cmd, args.gateway_cpus), env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(gw_proc)
        base_url = f"http://127.0.0.1:{port}"
        wait_http(base_url + "/health", gw_proc)
        gw = psutil.Process(gw_proc.pid)
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        result = runner(drive(args, base_url, gw, master))
        gw_proc.send_signal(signal.SIGTERM)
        gw_proc.wait(60)
        tail = (tmp / "gateway.log").read_text(errors="replace")
        result["gateway_log_tracebacks"] = tail.count("Traceback")
        result["machine"] = {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))
        return 0 if result["errors"] == 0 else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
            if p.poll() is None:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        if args.keys:
            import redis

            with redis.Redis.from_url(args.redis_url) as r:
                for name in r.scan_iter(match=redis_prefix + "*", count=1000):
                    r.delete(name)


if __name__ == "__main__":
    sys.exit(main())
