"""Drive the demo workload through the gateway's real HTTP endpoint, with a progress bar."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.demo.report import ClientResult
from gateway.demo.workload import DemoRequest


async def _send(client: httpx.AsyncClient, req: DemoRequest) -> ClientResult:
    t0 = time.perf_counter()
    ttft: float | None = None
    try:
        if not req.stream:
            response = await client.post("/v1/chat/completions", json=req.body)
            status, headers = response.status_code, response.headers
            error = None if status < 400 else _error_message(response.content)
        else:
            error = None
            async with client.stream("POST", "/v1/chat/completions", json=req.body) as response:
                status, headers = response.status_code, response.headers
                async for line in response.aiter_lines():
                    if ttft is None and line.startswith("data:"):
                        ttft = time.perf_counter() - t0
                    if line.startswith('data: {"error"'):
                        error = _error_message(line[6:].encode())
                if status >= 400:
                    error = _error_message(await response.aread())
    except httpx.HTTPError as exc:
        return ClientResult(req.kind, 0, "", "", time.perf_counter() - t0, None, str(exc) or type(exc).__name__)
    return ClientResult(
        kind=req.kind,
        status=status,
        model=headers.get("x-gateway-model", ""),
        cache=headers.get("x-gateway-cache", ""),
        seconds=time.perf_counter() - t0,
        ttft_seconds=ttft,
        error=error,
    )


def _error_message(content: bytes) -> str:
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:200].decode("utf-8", "replace")
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(parsed)[:200]


async def drive(
    base_url: str,
    workload: list[DemoRequest],
    *,
    concurrency: int,
    stop: asyncio.Event,
    progress: Progress | None = None,
    api_key: str | None = None,
) -> list[ClientResult]:
    """Send every request (at most ``concurrency`` at once) until done or ``stop`` is set, with ``api_key``."""
    queue: asyncio.Queue[DemoRequest] = asyncio.Queue()
    for req in workload:
        queue.put_nowait(req)
    results: list[ClientResult] = []
    task_id = progress.add_task("requests", total=len(workload), status="") if progress is not None else None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(120.0, connect=10.0)

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                req = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            result = await _send(client, req)
            results.append(result)
            if progress is not None and task_id is not None:
                hits = sum(1 for r in results if r.cache in ("hit", "semantic-hit"))
                failed = sum(1 for r in results if r.error is not None or r.status >= 400 or r.status == 0)
                progress.update(task_id, advance=1, status=f"cache hits {hits}  failed {failed}")

    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, headers=headers) as client:
        await asyncio.gather(*(worker(client) for _ in range(max(1, concurrency))))
    return results


def progress_bar(console: Console) -> Progress:
    """The progress bar the demo shows while the workload runs."""
    return Progress(
        TextColumn("[bold]Driving the workload[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    )
