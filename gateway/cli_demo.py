"""``gateway demo``: see the gateway work on a laptop, with one command and nothing else installed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    requests: Annotated[int, typer.Option("--requests", "-n", min=0, help="requests in the workload")] = 200,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight at once")] = 16,
    host: Annotated[str, typer.Option(help="address of the gateway and the simulated backends")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="gateway port (taken: any free port; 0: any free port)")
    ] = 8080,
    workdir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False, help="keep the config, the SQLite ledger and the logs here (default: a temp dir)"
        ),
    ] = None,
    time_scale: Annotated[
        float, typer.Option(min=0.0, help="multiply the simulated backends' delays (1: real-world speed)")
    ] = 0.25,
    seed: Annotated[int, typer.Option(help="workload seed (same seed, same requests)")] = 0,
    exit_after: Annotated[bool, typer.Option("--exit", help="exit after the report instead of serving")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON here")] = None,
) -> None:
    """See the gateway work: simulated backends, a realistic workload, a cost report, the dashboard.

    Starts simulated Llama-2 7B, 13B and GPT-4 backends and the gateway on its embedded defaults
    (in-process cache, SQLite ledger), drives the workload through the HTTP endpoint, prints requests and
    spend per model, savings against all-GPT-4, the cache hit rate and latency per backend, then keeps
    the gateway and its dashboard running until Ctrl-C (``--exit``: stop after the report).
    """
    import asyncio

    from rich.console import Console

    from gateway.demo.run import DemoOptions, run_demo

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, 120))
    opts = DemoOptions(
        requests=requests,
        concurrency=concurrency,
        host=host,
        port=port,
        workdir=workdir,
        time_scale=time_scale,
        seed=seed,
        exit_after=exit_after,
        json_path=json_path,
    )
    try:
        code = asyncio.run(run_demo(opts, console))
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def mount(app: typer.Typer) -> None:
    """Add ``demo`` to the ``gateway`` command."""
    app.command("demo")(demo)
