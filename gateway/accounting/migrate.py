"""Schema migrations of the ledger database, with Alembic, run programmatically at start-up.

The scripts ship in the package (``gateway/accounting/migrations``: ``env.py`` and ``versions/``). They run on
the caller's connection and transaction (an async engine's connection, through ``run_sync``), under a
PostgreSQL advisory lock so that replicas starting together agree. A ledger created by the hand-written runner
that came before (``gw_schema_version`` at 1 or 2) has no ``alembic_version`` table: revision ``0001``
recognises its tables and keeps them, and the later revisions upgrade it in place.

A database already at :data:`HEAD` is recognised with one query, and an empty one gets the current schema
from its declarations (``create_all``, then stamped :data:`HEAD`, as Alembic's docs describe for a new
database): in both cases Alembic is not imported, and Alembic, Mako and Pygments (~9 MiB) stay out of the
server process. ``tests/accounting/test_migrations.py`` checks that both ways give the same schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Column, Connection, MetaData, PrimaryKeyConstraint, String, Table, insert, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.accounting import quality_tables, schema

if TYPE_CHECKING:
    from alembic.config import Config

SCRIPT_LOCATION = "gateway.accounting:migrations"
#: The newest revision in ``migrations/versions`` (``tests/accounting/test_migrations.py`` checks it against
#: Alembic's view of the scripts): bump it with every new revision.
HEAD = "0008"
_PG_LOCK_ID = 0x67776C6564676572  # "gwledger"
#: Every table of the ledger's database, as the current code declares them.
DECLARED = (schema.metadata, quality_tables.metadata)
#: Alembic's own version table, as ``alembic upgrade`` creates it.
_VERSION = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer gateway (a revision this one does not know)."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the packaged scripts, bound to ``connection`` (what ``env.py`` runs on)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this gateway ships, as Alembic reads the scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The database's revision (None before any Alembic migration)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _at_head_or_created(connection: Connection) -> bool:
    """True when the database is at :data:`HEAD` already, or held none of the ledger's tables (nor a legacy one)
    and now has the current schema, stamped :data:`HEAD`; False, touching nothing, when it needs Alembic."""
    present = set(inspect(connection).get_table_names())
    if "alembic_version" in present:
        return list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars()) == [HEAD]
    if present & ({"gw_schema_version"} | {name for md in DECLARED for name in md.tables}):
        return False
    for md in DECLARED:
        md.create_all(connection)
    _VERSION.create(connection)
    connection.execute(insert(_VERSION).values(version_num=HEAD))
    return True


def _upgrade(connection: Connection, revision: str) -> str | None:
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = alembic_config(connection)
    current = current_revision(connection)
    known = {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNew(f"the ledger database is at revision {current}, unknown to this gateway (newer?)")
    command.upgrade(cfg, revision)
    return current_revision(connection)


async def migrate(conn: AsyncConnection, revision: str = "head") -> str | None:
    """Upgrade the schema to ``revision`` inside the caller's transaction; return the revision reached.

    Raises:
        SchemaTooNew: the database is at a revision this gateway does not know.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
    if revision in ("head", HEAD) and await conn.run_sync(_at_head_or_created):
        return HEAD
    return await conn.run_sync(_upgrade, revision)
