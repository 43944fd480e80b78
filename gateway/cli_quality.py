"""``gateway quality labels``: the deployment's verdicts and feedback as router labels (JSONL)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from gateway.config import load_settings
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.quality.labels import LabelCounts

quality_app = typer.Typer(no_args_is_help=True, help="The quality monitor's verdicts and feedback.")


async def export_from_config(
    config: Path, out: Path, route: str | None, since: str | None, counts: LabelCounts | None = None
) -> int:
    """Export the labels of the database ``config`` names to ``out``, feedback capped per key at the config's
    ``quality.max_label_share_per_key`` (as background adaptation does); the number of rows (``counts`` also
    learns how many feedback labels the cap left out).

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
            return await export_labels(
                db.engine,
                fh,
                route=route,
                start_ms=start,
                max_share=settings.quality.max_label_share_per_key,
                counts=counts,
            )
    finally:
        await db.aclose()


def capped_note(counts: LabelCounts) -> str:
    """`` (N feedback labels over one key's share left out)`` when the cap left any out, else nothing."""
    if not counts.capped:
        return ""
    return f" ({counts.capped} feedback labels over one key's share left out: quality.max_label_share_per_key)"


@quality_app.command("labels")
def labels_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="gateway YAML config (finds the database)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write")],
    route: Annotated[str | None, typer.Option(help="only this route's labels")] = None,
    since: Annotated[str | None, typer.Option(help="only labels since (30d, an ISO date, ...)")] = None,
) -> None:
    """Write {"prompt", "weak_score", "strong_score"} rows for `gateway router adapt --labels`."""
    from gateway.quality.labels import LabelCounts

    if not out.parent.is_dir():  # else the open's error read as the database's
        raise typer.BadParameter(f"no directory {out.parent}", param_hint="--out")
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a directory", param_hint="--out")
    counts = LabelCounts()
    try:
        n = asyncio.run(export_from_config(config, out, route, since, counts))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    except (SQLAlchemyError, OSError) as exc:
        typer.echo(f"error: the database is unreachable: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{n} labels written to {out}{capped_note(counts)}")
