"""The ledger's and the virtual keys' tables, the exact money type, and the versioned schema.

Money is exact end to end. PostgreSQL stores it as ``NUMERIC(20, 12)`` (``SUM`` is exact numeric
arithmetic). SQLite has no exact decimal type (``NUMERIC`` becomes a float), so there it is stored as an
integer count of 1e-12 USD: ``SUM`` over integers is exact, and SQLite raises an error rather than
wrap around if a sum ever passed 2**63 units (about 9.2 million USD in one aggregate).

These tables describe the current schema for the queries; the migrations that create and change them are
Alembic revisions (``gateway/accounting/migrations``, run by :mod:`gateway.accounting.migrate`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

#: Money resolution: 1e-12 USD (the same as gateway.pricing).
MONEY_PLACES = 12
_Q = Decimal(1).scaleb(-MONEY_PLACES)


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


class CleanString(TypeDecorator[str]):
    """A string column whose NUL characters are stored as U+FFFD: PostgreSQL refuses NUL in text (SQLite keeps it),
    and a client's prompt, comment or model name may carry one; refused, it would fail the whole insert."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else clean_text(value)


class CleanText(CleanString):
    """:class:`CleanString` as ``TEXT``."""

    impl = Text
    cache_ok = True


def clean_text(value: str) -> str:
    """``value`` with each NUL character replaced by U+FFFD (what :class:`CleanString` stores)."""
    return value.replace("\x00", "\ufffd")


def _id_type() -> TypeEngine[int]:
    # SQLite only auto-increments an INTEGER PRIMARY KEY.
    return BigInteger().with_variant(Integer(), "sqlite")


metadata = MetaData()

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
    # Cascade routes (revision 0006): the answer check's decision, every paid attempt (JSON: model, tokens,
    # cost_usd, outcome), and what the prompt router alone would have paid for the same request.
    Column("cascade", String(16), comment="cascade routes: accepted | escalated"),
    Column("cascade_attempts", Text, comment="cascade routes: JSON list, one entry per paid attempt"),
    Column("routed_cost_usd", Money(), comment="cascade routes: the prompt router's pick's cost"),
)
Index("ix_gw_ledger_ts", ledger.c.ts_ms)
Index("ux_gw_ledger_row_key", ledger.c.row_key, unique=True)
Index("ix_gw_ledger_key_ts", ledger.c.key_id, ledger.c.ts_ms)
Index("ix_gw_ledger_request_id", ledger.c.request_id)
# The cascade report reads only these rows (revision 0007).
Index(
    "ix_gw_ledger_cascade_ts",
    ledger.c.ts_ms,
    postgresql_where=ledger.c.cascade.is_not(None),
    sqlite_where=ledger.c.cascade.is_not(None),
)

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


class MoneySum(Money):
    """Money summed over many rows: ``NUMERIC(30, 12)`` on PostgreSQL (room for rollups), integer units on SQLite."""

    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(30, MONEY_PLACES, asdecimal=True))


#: One shared instance for the queries' sums: a type's dialect implementation is cached on the instance, and
#: building it anew for every statement cost milliseconds a dashboard refresh.
MONEY_SUM = MoneySum()

#: Upper bounds (exclusive, milliseconds) of the latency histograms' buckets; the last bucket is unbounded.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 8000, 15000, 30000,
)  # fmt: skip
LATENCY_BUCKETS = len(LATENCY_BOUNDS_MS) + 1
#: Rollup dimensions: every raw row adds to one rollup row of each, per grain (``total`` has value '').
DIMENSIONS: tuple[str, ...] = ("total", "model", "route", "team", "user")
#: Rollup grains, in milliseconds, by table suffix.
GRAINS_MS: dict[str, int] = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
#: Additive columns of a rollup row (everything but the key); their sums merge buckets.
COUNT_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cache_hits", "errors")
MONEY_COLUMNS = ("cost_usd", "baseline_cost_usd", "saved_usd")
TOTAL_HIST = tuple(f"lat_total_{i:02d}" for i in range(LATENCY_BUCKETS))
TTFT_HIST = tuple(f"lat_ttft_{i:02d}" for i in range(LATENCY_BUCKETS))
KEY_COLUMNS = ("dim", "bucket_ms", "key_id", "value")


def _rollup_table(grain: str) -> Table:
    name = f"gw_rollup_{grain}"
    table = Table(
        name,
        metadata,
        Column("dim", String(8), primary_key=True, comment="total, model, route, team or user"),
        Column("bucket_ms", BigInteger, primary_key=True, comment=f"bucket start, epoch ms ({grain})"),
        Column("key_id", String(64), primary_key=True, comment="'' when the request had no key"),
        Column("value", String(256), primary_key=True, comment="the dimension's value; '' for none"),
        *(Column(c, BigInteger, nullable=False) for c in COUNT_COLUMNS),
        *(Column(c, MoneySum(), nullable=False) for c in MONEY_COLUMNS),
        # Only the model rows carry latency histograms (NULL elsewhere: no space taken in PostgreSQL).
        *(Column(c, BigInteger) for c in TOTAL_HIST + TTFT_HIST),
        # The current hour's and day's rows are updated by every write: room for HOT updates (revision 0008).
        postgresql_with={} if grain == "minute" else {"fillfactor": 50},
    )
    Index(f"ix_{name}_key", table.c.key_id, table.c.dim, table.c.bucket_ms)
    return table


#: The rollup tables by grain: sums of the ledger's rows per bucket, key, dimension and value.
rollups: dict[str, Table] = {grain: _rollup_table(grain) for grain in GRAINS_MS}


#: Stored responses of the Responses API (``gateway/frontdoors/sql_store.py``, Alembic revision ``0005``): one
#: row per response, keyed by tenant and id, with its expiry.
stored_responses = Table(
    "gw_stored_responses",
    metadata,
    Column("tenant", String(64), primary_key=True, comment="the virtual key's id, '-' with keys off"),
    Column("response_id", String(64), primary_key=True),
    Column("expires_ms", BigInteger, nullable=False, comment="epoch milliseconds"),
    Column("record", Text, nullable=False, comment="JSON: the response and the conversation as chat messages"),
)
Index("ix_gw_stored_responses_expires", stored_responses.c.expires_ms)
