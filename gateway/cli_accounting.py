"""``gateway keys create|list|revoke`` and ``gateway spend``: the ledger's database from the terminal.

Each command reads ``--config`` to find the database (``ledger.url``, or ``DATABASE_URL``) and, for a
revocation, the Redis that replicas share (so they refuse the key at once).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError

from cache.base import StoreError
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from rich.text import Text

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke virtual API keys.")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="gateway YAML config (finds the database)")]
T = TypeVar("T")


#: C0 and C1 control characters (ESC among them), which would reach the operator's terminal as sequences.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown_text(value: str) -> Text:
    """``value`` for a Rich table cell as it is: not read as markup (``[red]``), its control characters escaped
    (``\\x1b``). Ledger strings come from clients: a user named ``[/bold]`` stopped ``gateway spend`` with a
    traceback, and escape sequences reached the terminal."""
    from rich.text import Text

    return Text(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value))


def _settings(config: Path) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _run(settings: Settings, job: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``job(admission)`` against the configured database; exit 1 with a message if it is down."""
    from gateway.accounting import open_database
    from gateway.auth import build_key_admission

    async def go() -> T:
        db = await open_database(settings.ledger.url, require=True)
        admission = await build_key_admission(settings, db)
        try:
            return await job(admission)
        finally:
            await admission.aclose()
            await db.aclose()

    return _database_run(go)


def _database_run(go: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(go())``, the database's errors as one line: exit 2 for a schema from a newer gateway, 1 for
    a database that is unreachable or refuses the command."""
    from gateway.accounting.migrate import SchemaTooNew

    try:
        return asyncio.run(go())
    except SchemaTooNew as exc:
        typer.echo(f"error: {exc}: run this command from the gateway version that migrated it", err=True)
        raise typer.Exit(2) from None
    except (SQLAlchemyError, OSError) as exc:
        typer.echo(f"error: the ledger database (ledger.url) is unreachable or refused the command: {exc}", err=True)
        raise typer.Exit(1) from None


def _quoted(value: str) -> str:
    """A stored name for a plain terminal line: quoted, its control characters escaped (keys made before names
    were checked may hold escape sequences)."""
    return "'" + _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value) + "'"


def _money(value: Decimal | None) -> str:
    return "-" if value is None else f"${value:,.6f}"


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="a label for the key")],
    config: ConfigOpt = Path("gateway.yaml"),
    team: Annotated[
        str | None,
        typer.Option(
            "--team",
            help="team the key's spend is attributed to; its keys also share cached answers (cache.team_namespace)",
        ),
    ] = None,
    budget_usd: Annotated[str | None, typer.Option("--budget-usd", help="total spend allowed, USD")] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="tokens per minute")] = None,
) -> None:
    """Create a key and print its secret (shown this once only)."""
    from gateway.accounting.queries import parse_budget

    budget: Decimal | None = None
    if budget_usd is not None:
        try:
            budget = parse_budget(budget_usd)
        except ValueError as exc:
            typer.echo(f"error: --budget-usd {exc}", err=True)
            raise typer.Exit(2) from None
    from gateway.auth.keys import InvalidKeyField, checked_key_fields

    try:
        checked_key_fields(name, team, rpm, tpm)  # before the database is touched (the store checks again)
    except InvalidKeyField as exc:
        typer.echo(f"error: --{exc.param}: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = _settings(config)
    record, secret = _run(settings, lambda adm: adm.create_key(name, team=team, budget_usd=budget, rpm=rpm, tpm=tpm))
    typer.echo(secret)
    typer.echo(
        f"created {record.id} {_quoted(record.name)} team={_quoted(record.team) if record.team else '-'} "
        f"budget={_money(record.budget_usd)} "
        f"rpm={record.rpm or '-'} tpm={record.tpm or '-'} (store the key now: it is not shown again)",
        err=True,
    )


@keys_app.command("list")
def list_keys(
    config: ConfigOpt = Path("gateway.yaml"),
    all_keys: Annotated[bool, typer.Option("--all", help="include revoked keys")] = False,
) -> None:
    """List keys with their limits and spend (never their secrets)."""
    from rich.console import Console
    from rich.table import Table

    settings = _settings(config)

    async def job(adm: Any) -> list[tuple[Any, Decimal]]:
        records = await adm.store.list(include_revoked=all_keys)
        return [(r, await adm.store.spent(r.id)) for r in records]

    rows = _run(settings, job)
    table = Table(title="Virtual keys")
    for col in ("id", "name", "team", "key", "budget", "spent", "rpm", "tpm", "created", "status"):
        table.add_column(col, justify="right" if col in ("budget", "spent", "rpm", "tpm") else "left")
    for r, spent in rows:
        table.add_row(
            r.id,
            shown_text(r.name),
            shown_text(r.team or "-"),
            r.key_prefix + "…",
            _money(r.budget_usd),
            _money(spent),
            str(r.rpm or "-"),
            str(r.tpm or "-"),
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            "revoked" if r.revoked else "active",
        )
    Console(width=160).print(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id (key_...)")], config: ConfigOpt = Path("gateway.yaml")
) -> None:
    """Revoke a key: refused at once by replicas sharing Redis, else within auth.key_cache_seconds."""
    settings = _settings(config)
    try:
        record = _run(settings, lambda adm: adm.revoke_key(key_id))
    except StoreError as exc:  # pragma: no cover - revoke_key already downgrades this to a warning
        typer.echo(f"warning: {exc}", err=True)
        raise typer.Exit(1) from None
    if record is None:
        typer.echo(f"error: no key '{key_id}'", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {record.id} {_quoted(record.name)}")


def spend(
    config: ConfigOpt = Path("gateway.yaml"),
    group_by: Annotated[str, typer.Option("--group-by", help="model, key, team, user, route or day")] = "model",
    since: Annotated[str | None, typer.Option("--since", help="24h, 7d, an ISO date or epoch seconds")] = None,
    until: Annotated[str | None, typer.Option("--until", help="end of the range (default: now)")] = None,
) -> None:
    """Spend per group from the ledger: requests, tokens, cost, GPT-4 baseline and savings."""
    from rich.console import Console
    from rich.table import Table

    from gateway.accounting import queries as q

    if group_by not in q.GROUPS:
        typer.echo(f"error: --group-by must be one of {', '.join(q.GROUPS)}", err=True)
        raise typer.Exit(2)
    try:
        start, end = q.parse_time(since), q.parse_time(until)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = _settings(config)

    async def job(adm: Any) -> tuple[list[q.SpendRow], q.SpendRow]:
        engine = adm.store.db.engine
        rows = await q.spend(engine, group_by, start_ms=start, end_ms=end)
        return rows, await q.totals(engine, start_ms=start, end_ms=end)

    rows, total = _run(settings, job)
    title = f"Spend by {group_by}" + (f" since {since}" if since else "")
    table = Table(title=title, show_footer=True)
    labels = (group_by, "requests", "prompt tok", "completion tok", "cost", "baseline", "saved", "cache hits")
    footer = (
        "total",
        f"{total.requests:,}",
        f"{total.prompt_tokens:,}",
        f"{total.completion_tokens:,}",
        _money(total.cost_usd),
        _money(total.baseline_cost_usd),
        _money(total.saved_usd),
        f"{total.cache_hits:,}",
    )
    for i, (label, foot) in enumerate(zip(labels, footer, strict=True)):
        table.add_column(label, footer=foot, justify="left" if i == 0 else "right")
    for r in rows:
        group = r.group if r.group is not None else "-"
        if r.name:
            group = f"{group} ({r.name})"
        table.add_row(
            shown_text(group),  # a client's own string (its `user`, its model name): data, never markup
            f"{r.requests:,}",
            f"{r.prompt_tokens:,}",
            f"{r.completion_tokens:,}",
            _money(r.cost_usd),
            _money(r.baseline_cost_usd),
            _money(r.saved_usd),
            f"{r.cache_hits:,}",
        )
    Console(width=160).print(table)


def migrate(config: ConfigOpt = Path("gateway.yaml")) -> None:
    """Bring the ledger's schema up to this gateway's: what `gateway serve` does at start-up, before its port
    opens. Run it first where an upgrade backfills a large ledger (minutes for millions of rows)."""
    from gateway.accounting import open_database
    from gateway.accounting.migrate import current_revision, head_revision

    settings = _settings(config)

    async def go() -> str | None:
        db = await open_database(settings.ledger.url, require=True)  # migrates, under the replicas' shared lock
        try:
            async with db.engine.connect() as conn:
                return await conn.run_sync(current_revision)
        finally:
            await db.aclose()

    reached = _database_run(go)
    typer.echo(f"ledger schema at revision {reached} (this gateway's newest: {head_revision()})")


def mount(app: typer.Typer) -> None:
    """Add ``keys``, ``spend`` and ``migrate`` to the ``gateway`` command."""
    app.add_typer(keys_app, name="keys")
    app.command("spend")(spend)
    app.command("migrate")(migrate)
