"""``gateway quality labels``: the deployment's verdicts and feedback as router labels (JSONL)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from gateway.config import load_settings
from gateway.errors import ConfigError

quality_app = typer.Typer(no_args_is_help=True, help="The quality monitor's verdicts and feedback.")


async def export_from_config(config: Path, out: Path, route: str | None, since: str | None) -> int:
    """Export the labels of the database ``config`` names to ``out``; the number of rows.

    Raises:
        ConfigError: the config is invalid. SQLAlchemyError, OSError, ValueError: the database or ``since``.
    """
    from gateway.accounting import open_database
    from gateway.accounting.queries import parse_time
    from gateway.quality.labels import export_labels, open_private

    settings = load_settings(config)
    start = parse_time(since)
    db = await open_database(settings.ledger.url, require=True)
    try:
        with open_private(out) as fh:
            return await export_labels(db.engine, fh, route=route, start_ms=start)
    finally:
        await db.aclose()


@quality_app.command("labels")
def labels_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="gateway YAML config (finds the database)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write")],
    route: Annotated[str | None, typer.Option(help="only this route's labels")] = None,
    since: Annotated[str | None, typer.Option(help="only labels since (30d, an ISO date, ...)")] = None,
) -> None:
    """Write {"prompt", "weak_score", "strong_score"} rows for `gateway router adapt --labels`."""
    try:
        n = asyncio.run(export_from_config(config, out, route, since))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    except (SQLAlchemyError, OSError) as exc:
        typer.echo(f"error: the database is unreachable: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{n} labels written to {out}")
