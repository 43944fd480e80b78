"""The ``gateway`` command line: serve, simulate, route --explain, and the subcommands of later stages.

Heavy imports happen inside commands so ``gateway --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from gateway.config import MAX_PORT
from gateway.errors import ConfigError, InvalidRequest

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Hybrid LLM gateway: one OpenAI endpoint, many backends."
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="gateway YAML config")]


def _load(config: Path) -> object:
    from gateway._config_source import origin
    from gateway.config import load_settings
    from gateway.pricing import baseline_problem

    try:
        settings = load_settings(config)
        problem = baseline_problem(settings)
        if problem is not None:
            raise ConfigError(f"{origin(('ledger', 'baseline_model'), str(config))}: {problem}")
        return settings
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOpt = Path("gateway.yaml"),
    host: Annotated[str | None, typer.Option(help="bind address (default: server.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: server.port, 8080)")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes (default: server.workers)")] = None,
    allow_unauthenticated: Annotated[
        bool, typer.Option(help="serve a non-loopback address with auth off (refused otherwise)")
    ] = False,
) -> None:
    """Serve the OpenAI-compatible API described by CONFIG."""
    from gateway.exposure import listen_flags_problem

    flags = listen_flags_problem(port, workers)  # the bounds of server.port and server.workers
    if flags is not None:
        typer.echo(f"error: {flags}", err=True)
        raise typer.Exit(2)
    _load(config)  # a bad config stops here, with one line naming the file, the key and the problem
    # -P: the working directory does not go on sys.path, so a checkout there cannot shadow the installed
    # package with other sources than the ones installed.
    argv = [sys.executable, "-P", "-m", "gateway.server", "--config", str(config)]
    for flag, value in (("--host", host), ("--port", port), ("--workers", workers)):
        if value is not None:
            argv += [flag, str(value)]
    if allow_unauthenticated:
        argv.append("--allow-unauthenticated")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # the server process keeps none of the CLI's modules


@app.command()
def simulate(
    profile: Annotated[str, typer.Option(help="llama-2-7b, llama-2-13b, gpt-4 or fast")] = "llama-2-7b",
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=MAX_PORT)] = 8001,
    time_scale: Annotated[float, typer.Option(min=0.0, help="multiply every delay (0.01: 100x faster)")] = 1.0,
    max_concurrency: Annotated[int | None, typer.Option(min=1, help="running requests before queueing")] = None,
    model_name: Annotated[str | None, typer.Option(help="served model name")] = None,
    seed: int = 0,
    answer_rules: Annotated[
        Path | None, typer.Option(help="JSON file of per-prompt answer rules (refuse, truncate, low_confidence)")
    ] = None,
    judge: Annotated[
        Path | None, typer.Option(help="JSON file of the ground truth it judges by (gateway/simulator/judge.py)")
    ] = None,
) -> None:
    """Run a SIMULATED OpenAI-compatible backend (a test and demo tool, not a model)."""
    from gateway.simulator import PROFILES
    from gateway.simulator import serve as serve_sim
    from gateway.simulator.answers import load_answer_rules
    from gateway.simulator.judge import JudgeRules, parse_judge

    if profile not in PROFILES:
        raise typer.BadParameter(f"one of {', '.join(sorted(PROFILES))}", param_hint="--profile")

    try:
        rules = load_answer_rules(answer_rules) if answer_rules is not None else None
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--answer-rules") from exc
    try:
        truth = parse_judge(json.loads(judge.read_text(encoding="utf-8"))) if judge is not None else JudgeRules()
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--judge") from exc

    typer.echo(f"simulated backend '{profile}' on http://{host}:{port}/v1 (not a real model)", err=True)
    serve_sim(
        profile,
        host,
        port,
        time_scale=time_scale,
        max_concurrency=max_concurrency,
        model_name=model_name,
        seed=seed,
        answer_rules=rules,
        judge=truth,
    )


@app.command()
def route(
    config: ConfigOpt = Path("gateway.yaml"),
    explain: Annotated[bool, typer.Option("--explain", help="show every candidate's predictions")] = True,
    body: Annotated[str | None, typer.Option(help="request JSON (default: read stdin)")] = None,
    policy: Annotated[str | None, typer.Option(help="override the route's policy")] = None,
) -> None:
    """Show how a request body would be routed, without calling any backend."""
    import asyncio

    from gateway.config import Settings
    from gateway.runtime import build_gateway, close_gateway

    settings = _load(config)
    assert isinstance(settings, Settings)
    raw = (body if body is not None else sys.stdin.read()).encode()

    async def go() -> dict[str, object]:
        gw = await build_gateway(settings)
        try:
            headers = {"x-gateway-policy": policy} if policy else {}
            ctx = gw.pipeline.new_context("chat", headers)
            return await gw.pipeline.explain(ctx, raw)
        finally:
            await close_gateway(gw)

    from gateway.errors import GatewayError

    try:
        out = asyncio.run(go())
    except GatewayError as err:
        typer.echo(json.dumps(err.to_body(), indent=2))
        raise typer.Exit(1) from None
    if explain:
        typer.echo(json.dumps(out, indent=2))
    else:
        typer.echo(out["winner"])


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="JSONL requests, with per-model outcomes where known")],
    config: ConfigOpt = Path("gateway.yaml"),
    policy: Annotated[list[str] | None, typer.Option("--policy", "-p", help="policy to compare (repeatable)")] = None,
    route: Annotated[str, typer.Option(help="route whose candidates to use")] = "auto",
    limit: Annotated[int | None, typer.Option(help="first N records only")] = None,
    plot_file: Annotated[
        Path | None, typer.Option("--plot", help="write a cost/quality PNG here (needs the plot extra)")
    ] = None,
) -> None:
    """Run requests through routing policies without calling backends; compare cost, quality, latency."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from gateway import replay as rp
    from gateway.config import Settings
    from gateway.runtime import build_gateway, close_gateway

    if plot_file is not None:
        from gateway.cli_router import require_plotting

        require_plotting("leave out --plot")
    settings = _load(config)
    assert isinstance(settings, Settings)
    try:
        records = rp.load_records(file, limit)
    except OSError as exc:
        typer.echo(f"error: {file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    async def go() -> list[rp.PolicyTotals]:
        gw = await build_gateway(settings)
        try:
            names = policy or sorted(gw.router.policies)
            for name in names:
                try:
                    gw.router.policy(name)  # unknown names fail before any work
                except InvalidRequest as exc:
                    raise typer.BadParameter(exc.message, param_hint="--policy") from None
            return rp.replay(records, gw.router, gw.pipeline.counter, names, route)
        finally:
            await close_gateway(gw)

    totals = asyncio.run(go())
    table = Table(title=f"{len(records)} requests replayed on route '{route}' (no backend called)")
    for col in ("policy", "cost USD", "mean quality", "quality known", "mean latency ms", "models"):
        table.add_column(col)
    for t in totals:
        models = ", ".join(f"{m} {n / max(t.requests, 1):.0%}" for m, n in t.models.most_common())
        table.add_row(
            t.policy,
            f"{t.cost_usd:.4f}",
            f"{t.mean_quality:.3f}",
            f"{t.quality_known}/{t.requests}",
            f"{t.mean_latency_ms:.0f}",
            models,
        )
    Console().print(table)
    if plot_file is not None:
        rp.plot(totals, plot_file)
        typer.echo(f"plot: {plot_file}")


def _mount_optional() -> None:
    """Subcommands that live in their own modules (mounted when present)."""
    from gateway.cli_accounting import mount as mount_accounting

    mount_accounting(app)  # keys create|list|revoke, spend
    from gateway.cli_demo import mount as mount_demo

    mount_demo(app)  # demo
    from gateway.cli_quality import quality_app

    app.add_typer(quality_app, name="quality", help="The quality monitor's verdicts and feedback as router labels.")
    try:
        from gateway.cli_router import router_app
    except ImportError:
        return
    app.add_typer(router_app, name="router", help="Train, score and evaluate the learned quality router.")


_mount_optional()


def main() -> None:
    """Console-script entry point."""
    app()
