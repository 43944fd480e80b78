"""``gateway demo``: simulated backends, a real gateway, a realistic workload, a report; then it keeps serving.

The steps, all on this machine and with nothing else installed:

1. start simulated Llama-2 7B and 13B (vLLM-like, with ``/metrics``) and GPT-4 backends in one child
   process on ephemeral ports (:mod:`gateway.demo.sims`);
2. write the gateway's config to the working directory and start the gateway in this process on the
   embedded defaults: in-process cache, SQLite ledger in the working directory;
3. drive the workload (:mod:`gateway.demo.workload`) through the gateway's HTTP endpoint;
4. read the ledger back and print the report (:mod:`gateway.demo.report`);
5. print the URLs and serve until Ctrl-C (or exit at once with ``--exit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from rich.console import Console

from gateway.demo.drive import drive, progress_bar
from gateway.demo.report import build_report, render_report, wait_for_rows
from gateway.demo.sims import QuietServer, SimulatorFleet, bind_socket
from gateway.demo.workload import build_workload

log = logging.getLogger("gateway.demo")

#: What the simulated models are called, served as and priced at (as in gateway.example.yaml).
_LOCAL = {
    "llama-2-7b": {
        "upstream": "meta-llama/Llama-2-7b-chat-hf",
        "quality": 6.27,
        "gpu_hour_usd": "1.00",
        "tokens_per_second": 1500,
        "max_in_flight": 32,
    },
    "llama-2-13b": {
        "upstream": "meta-llama/Llama-2-13b-chat-hf",
        "quality": 6.65,
        "gpu_hour_usd": "1.80",
        "tokens_per_second": 900,
        "max_in_flight": 24,
    },
}


@dataclass(slots=True)
class DemoOptions:
    """The command's options."""

    requests: int = 200
    concurrency: int = 16
    host: str = "127.0.0.1"
    port: int = 8080
    workdir: Path | None = None
    time_scale: float = 0.25
    seed: int = 0
    exit_after: bool = False
    json_path: Path | None = None


def demo_config(urls: dict[str, str], workdir: Path, host: str, port: int) -> dict[str, Any]:
    """The gateway configuration of the demo (``urls``: profile name -> OpenAI base URL)."""
    models: list[dict[str, Any]] = []
    for name, facts in _LOCAL.items():
        models.append(
            {
                "name": name,
                "backend": "vllm",
                "base_url": urls[name],
                "upstream_model": facts["upstream"],
                "quality": facts["quality"],
                "context_window": 4096,
                "supports_tools": False,
                "gpu_hour_usd": facts["gpu_hour_usd"],
                "tokens_per_second": facts["tokens_per_second"],
                "max_in_flight": facts["max_in_flight"],
            }
        )
    models.append(
        {
            "name": "gpt-4",
            "backend": "openai",
            "base_url": urls["gpt-4"],
            "upstream_model": "gpt-4",
            "quality": 8.99,
            "context_window": 8192,
            "supports_tools": True,
        }
    )
    everything = ["llama-2-7b", "llama-2-13b", "gpt-4"]
    return {
        "models": models,
        "routes": {
            "auto": {
                "models": everything,
                "policy": "balanced",
                "weights": {"quality": 2.0, "cost": 1.0, "latency": 1.0},
            },
            "cheap": {"models": everything, "policy": "cost", "min_quality": 6.0},
            "fast": {"models": everything, "policy": "latency"},
            "best": {"models": ["gpt-4", "llama-2-13b"], "policy": "quality"},
        },
        "server": {"host": host, "port": port},
        "cache": {"enabled": True},
        "ledger": {
            "url": f"sqlite+aiosqlite:///{workdir / 'gateway-ledger.db'}",
            "baseline_model": "gpt-4",
            "flush_interval_seconds": 0.2,
        },
    }


@contextlib.contextmanager
def _embedded_defaults() -> Iterator[None]:
    """Hide REDIS_URL, DATABASE_URL and GATEWAY_<SECTION>__... while the demo's config is validated, so a
    shell set up for a production gateway never points the demo at its Redis or its ledger."""
    from gateway.config import Settings

    hidden = {
        k: v
        for k, v in os.environ.items()
        if k in ("REDIS_URL", "DATABASE_URL")
        or (k.startswith("GATEWAY_") and k[8:].split("__")[0].lower() in Settings.model_fields)
    }
    for k in hidden:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(hidden)


def _gateway_socket(host: str, port: int) -> socket.socket:
    """``port`` if free (0: any), else an ephemeral port."""
    try:
        return bind_socket(host, port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
        return bind_socket(host, 0)


def _log_to_file(path: Path) -> None:
    from gateway.logs import JSONFormatter

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def _start_gateway(config_path: Path, sock: socket.socket) -> tuple[QuietServer, asyncio.Task[None], Any]:
    from gateway.app import create_app
    from gateway.config import load_settings

    with _embedded_defaults():
        settings = load_settings(config_path)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
        h11_max_incomplete_event_size=settings.server.max_header_bytes,
    )
    server = QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            raise RuntimeError("the gateway failed to start")
        await asyncio.sleep(0.01)
    return server, task, app.state.gateway


@contextlib.contextmanager
def demo_master_key() -> Iterator[str]:
    """A fresh master key, set as ``GATEWAY_MASTER_KEY`` for the block (auth is on with it; the dashboard and
    admin endpoints need it). A key already in the shell (a production one) is never used nor printed, and is
    back in place after the block."""
    previous = os.environ.get("GATEWAY_MASTER_KEY")
    key = os.environ["GATEWAY_MASTER_KEY"] = "sk-demo-" + secrets.token_hex(16)
    try:
        yield key
    finally:
        if previous is None:
            os.environ.pop("GATEWAY_MASTER_KEY", None)
        else:
            os.environ["GATEWAY_MASTER_KEY"] = previous


def _urls(console: Console, base: str, workdir: Path, config_path: Path, temporary: bool, key: str) -> None:
    console.print()
    console.print(f"[bold]Master key[/]            {key} (the dashboard asks for it; auth is on)")
    console.print(f"[bold]Gateway (OpenAI API)[/]  {base}/v1")
    console.print(f"[bold]Dashboard[/]             {base}/dashboard")
    console.print(f"[bold]Metrics[/]               {base}/metrics")
    console.print(f"[bold]Spend API[/]             {base}/admin/spend?group_by=model")
    console.print(
        f"Config {config_path}; ledger {workdir / 'gateway-ledger.db'}"
        + (" (a temporary directory, removed on exit)" if temporary else "")
    )
    console.print(f"  gateway spend --config {config_path}")
    body = '{"model": "auto", "messages": [{"role": "user", "content": "Hello!"}]}'
    console.print(
        f"  curl {base}/v1/chat/completions -H 'authorization: Bearer {key}' "
        f"-H 'content-type: application/json' -d '{body}'",
        soft_wrap=True,
    )


async def run_demo(opts: DemoOptions, console: Console) -> int:
    """Run the demo; returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    temporary = opts.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="gateway-demo-")) if opts.workdir is None else opts.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _log_to_file(workdir / "demo.log")
    try:
        return await _run(opts, console, workdir, stop, temporary)
    finally:
        logging.getLogger().handlers.clear()
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)


async def _run(opts: DemoOptions, console: Console, workdir: Path, stop: asyncio.Event, temporary: bool) -> int:
    console.print(
        "[bold]LLM hybrid gateway demo[/] — simulated backends (no GPU, no API key: "
        "[italic]not real models[/]), the real gateway, a realistic workload."
    )
    with (
        SimulatorFleet(workdir / "backends.log", host=opts.host, time_scale=opts.time_scale, seed=opts.seed) as fleet,
        demo_master_key() as key,  # before the gateway is built: auth is on with it
    ):
        ports = await fleet.wait_ready()
        urls = {name: fleet.url(name) for name in ports}
        for name, url in urls.items():
            console.print(f"  simulated {name:<12} {url}")
        sock = _gateway_socket(opts.host, opts.port)
        port = sock.getsockname()[1]
        base = f"http://{opts.host}:{port}"
        config_path = workdir / "gateway.yaml"
        config = demo_config(urls, workdir, opts.host, port)
        config_path.write_text("# written by `gateway demo`\n" + yaml.safe_dump(config, sort_keys=False), "utf-8")
        server, task, gw = await _start_gateway(config_path, sock)
        console.print(f"  gateway              {base}/v1 (in-process cache, SQLite ledger in {workdir})")
        try:
            code = await _workload(
                opts,
                console,
                base,
                gw,
                stop,
                key,
                extra={
                    "gateway_url": base,
                    "backend_ports": ports,
                    "backends_pid": fleet.pid,
                    "workdir": str(workdir),
                },
            )
            if code == 0 and not opts.exit_after and not stop.is_set():
                _urls(console, base, workdir, config_path, temporary, key)
                console.print("\n[bold]The gateway keeps running. Press Ctrl-C to stop.[/]")
                await stop.wait()
                console.print("Stopping…")
        finally:
            server.should_exit = True
            await task
    return code


async def _workload(
    opts: DemoOptions, console: Console, base: str, gw: Any, stop: asyncio.Event, key: str, extra: dict[str, Any]
) -> int:
    if opts.requests <= 0:
        return 0
    workload = build_workload(opts.requests, opts.seed)
    console.print(
        f"\nSending {len(workload)} requests ({opts.concurrency} at a time): chat, FAQ repeats, "
        "long summaries, code, hard reasoning, tool calls, pinned models."
    )
    start_ms = int(time.time() * 1000) - 1
    t0 = time.perf_counter()
    with progress_bar(console) as progress:
        results = await drive(base, workload, concurrency=opts.concurrency, stop=stop, progress=progress, api_key=key)
    wall = time.perf_counter() - t0
    if stop.is_set():
        console.print("Interrupted.")
        return 130
    found = await wait_for_rows(gw.recorder, start_ms, len(results))
    if found < len(results):
        log.warning("the ledger holds %d of %d demo requests", found, len(results))
    end_ms = int(time.time() * 1000) + 1
    report = await build_report(gw.recorder.db.engine, start_ms, end_ms, results, wall)
    report.extra.update(extra, time_scale=opts.time_scale)
    console.print()
    render_report(report, console, time_scale=opts.time_scale)
    if opts.json_path is not None:
        opts.json_path.write_text(json.dumps(report.to_json(), indent=2), "utf-8")
    if report.client_ok == 0:
        console.print("[bold red]No request succeeded: see demo.log and backends.log in the working directory.[/]")
        return 1
    return 0
