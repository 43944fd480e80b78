"""FROZEN copy of gateway/accounting/schema.py before Alembic (hand-written runner, schema version 2).

Used only to write a ledger the way the gateway did before, so that the migration tests upgrade a real one.
Do not edit.

The ledger's and the virtual keys' tables, the exact money type, and the versioned schema.

Money is exact end to end. PostgreSQL stores it as ``NUMERIC(20, 12)`` (``SUM`` is exact numeric
arithmetic). SQLite has no exact decimal type (``NUMERIC`` becomes a float), so there it is stored as an
integer count of 1e-12 USD: ``SUM`` over integers is exact, and SQLite raises an error rather than
wrap around if a sum ever passed 2**63 units (about 9.2 million USD in one aggregate).

The schema is versioned in ``gw_schema_version``; :func:`migrate` applies the missing steps of
:data:`MIGRATIONS` in order, under an advisory lock on PostgreSQL so replicas starting together agree.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator, TypeEngine

#: Money resolution: 1e-12 USD (the same as gateway.pricing).
MONEY_PLACES = 12
_Q = Decimal(1).scaleb(-MONEY_PLACES)
_PG_LOCK_ID = 0x67776C6564676572  # "gwledger"


class Money(TypeDecorator[Decimal]):
    """USD as :class:`~decimal.Decimal`: ``NUMERIC(20, 12)``, or integer 1e-12 units on SQLite."""

    impl = Numeric(20, MONEY_PLACES)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(20, MONEY_PLACES, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = Decimal(value).quantize(_Q)
        if dialect.name == "sqlite":
            return int(amount.scaleb(MONEY_PLACES))
        return amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-MONEY_PLACES).quantize(_Q)
        return Decimal(value).quantize(_Q)


def _id_type() -> TypeEngine[int]:
    # SQLite only auto-increments an INTEGER PRIMARY KEY.
    return BigInteger().with_variant(Integer(), "sqlite")


metadata = MetaData()

schema_version = Table(
    "gw_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

ledger = Table(
    "gw_ledger",
    metadata,
    Column("id", _id_type(), primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("ts_ms", BigInteger, nullable=False, comment="epoch milliseconds (bucketing)"),
    Column("day", String(10), nullable=False, comment="UTC date YYYY-MM-DD"),
    Column("request_id", String(128), nullable=False),
    Column("key_id", String(64)),
    Column("user", String(256)),
    Column("team", String(128)),
    Column("endpoint", String(16), nullable=False),
    Column("route", String(128)),
    Column("policy", String(64)),
    Column("requested_model", String(256), nullable=False),
    Column("chosen_model", String(256)),
    Column("stream", Boolean, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("tokens_estimated", Boolean, nullable=False),
    Column("cost_usd", Money(), nullable=False),
    Column("baseline_cost_usd", Money(), nullable=False),
    Column("saved_usd", Money(), nullable=False),
    Column("cache_status", String(16), nullable=False),
    Column("ttft_ms", Float),
    Column("total_ms", Float),
    Column("status_code", Integer, nullable=False),
    Column("error_type", String(64)),
    Column("attempts", Integer, nullable=False),
    # Written once per row by the gateway: a batch retried after a commit whose reply was lost is not written twice.
    Column("row_key", String(32), comment="unique per row; NULL in rows older than schema version 2"),
)
Index("ix_gw_ledger_ts", ledger.c.ts_ms)
Index("ux_gw_ledger_row_key", ledger.c.row_key, unique=True)
Index("ix_gw_ledger_key_ts", ledger.c.key_id, ledger.c.ts_ms)
Index("ix_gw_ledger_day", ledger.c.day)

api_keys = Table(
    "gw_api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("team", String(128)),
    Column("key_hash", String(64), nullable=False, unique=True, comment="sha256 hex of the secret"),
    Column("key_prefix", String(16), nullable=False, comment="first characters, for display"),
    Column("budget_usd", Money()),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[ledger, api_keys], checkfirst=True)


def _v2(conn: Connection) -> None:
    # A database created by this version's _v1 (create_all of the current tables) has both already.
    found = inspect(conn)
    if "row_key" not in {c["name"] for c in found.get_columns("gw_ledger")}:
        conn.execute(text("ALTER TABLE gw_ledger ADD COLUMN row_key VARCHAR(32)"))
    if "ux_gw_ledger_row_key" not in {i["name"] for i in found.get_indexes("gw_ledger")}:
        conn.execute(text("CREATE UNIQUE INDEX ux_gw_ledger_row_key ON gw_ledger (row_key)"))


#: Ordered schema steps; append, never edit a released one.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "ledger and api keys", _v1),
    (2, "ledger row keys (idempotent batch writes)", _v2),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _current_version(conn: Connection) -> int:
    schema_version.create(conn, checkfirst=True)
    found = conn.execute(select(schema_version.c.version).order_by(schema_version.c.version.desc())).first()
    return int(found[0]) if found else 0


async def migrate(conn: AsyncConnection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` inside the caller's transaction; return the version."""
    from datetime import UTC, datetime

    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
    current = await conn.run_sync(_current_version)
    if current > SCHEMA_VERSION:
        raise RuntimeError(
            f"the ledger database has schema version {current}, newer than this gateway's {SCHEMA_VERSION}"
        )
    for version, _name, step in MIGRATIONS:
        if version > current:
            await conn.run_sync(step)
            await conn.execute(schema_version.insert().values(version=version, applied_at=datetime.now(UTC)))
    return SCHEMA_VERSION
