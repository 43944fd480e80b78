"""The ledger and the virtual keys: the schema of the hand-written runner's versions 1 and 2.

A database created by that runner (``gw_schema_version`` at 1 or 2) already has these tables: they are kept
as they are, and a version-1 ledger gets its ``row_key`` column. ``gw_schema_version`` itself is left in
place, unused.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.accounting.schema import Money

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    tables = set(sa.inspect(op.get_bind()).get_table_names())
    if "gw_ledger" not in tables:
        op.create_table(
            "gw_ledger",
            sa.Column("id", _id(), primary_key=True, autoincrement=True),
            sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
            sa.Column("ts_ms", sa.BigInteger, nullable=False, comment="epoch milliseconds (bucketing)"),
            sa.Column("day", sa.String(10), nullable=False, comment="UTC date YYYY-MM-DD"),
            sa.Column("request_id", sa.String(128), nullable=False),
            sa.Column("key_id", sa.String(64)),
            sa.Column("user", sa.String(256)),
            sa.Column("team", sa.String(128)),
            sa.Column("endpoint", sa.String(16), nullable=False),
            sa.Column("route", sa.String(128)),
            sa.Column("policy", sa.String(64)),
            sa.Column("requested_model", sa.String(256), nullable=False),
            sa.Column("chosen_model", sa.String(256)),
            sa.Column("stream", sa.Boolean, nullable=False),
            sa.Column("prompt_tokens", sa.Integer, nullable=False),
            sa.Column("completion_tokens", sa.Integer, nullable=False),
            sa.Column("tokens_estimated", sa.Boolean, nullable=False),
            sa.Column("cost_usd", Money(), nullable=False),
            sa.Column("baseline_cost_usd", Money(), nullable=False),
            sa.Column("saved_usd", Money(), nullable=False),
            sa.Column("cache_status", sa.String(16), nullable=False),
            sa.Column("ttft_ms", sa.Float),
            sa.Column("total_ms", sa.Float),
            sa.Column("status_code", sa.Integer, nullable=False),
            sa.Column("error_type", sa.String(64)),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("row_key", sa.String(32), comment="unique per row; NULL in rows older than schema version 2"),
        )
        op.create_index("ix_gw_ledger_ts", "gw_ledger", ["ts_ms"])
        op.create_index("ix_gw_ledger_key_ts", "gw_ledger", ["key_id", "ts_ms"])
        op.create_index("ix_gw_ledger_day", "gw_ledger", ["day"])
        op.create_index("ux_gw_ledger_row_key", "gw_ledger", ["row_key"], unique=True)
    else:  # written by the hand-written runner: version 1 lacks the row keys
        found = sa.inspect(op.get_bind())
        if "row_key" not in {c["name"] for c in found.get_columns("gw_ledger")}:
            op.add_column("gw_ledger", sa.Column("row_key", sa.String(32)))
        if "ux_gw_ledger_row_key" not in {i["name"] for i in found.get_indexes("gw_ledger")}:
            op.create_index("ux_gw_ledger_row_key", "gw_ledger", ["row_key"], unique=True)
    if "gw_api_keys" not in tables:
        op.create_table(
            "gw_api_keys",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("name", sa.String(128), nullable=False),
            sa.Column("team", sa.String(128)),
            sa.Column("key_hash", sa.String(64), nullable=False, unique=True, comment="sha256 hex of the secret"),
            sa.Column("key_prefix", sa.String(16), nullable=False, comment="first characters, for display"),
            sa.Column("budget_usd", Money()),
            sa.Column("rpm", sa.Integer),
            sa.Column("tpm", sa.Integer),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("revoked_at", sa.DateTime(timezone=True)),
        )


def downgrade() -> None:
    op.drop_table("gw_api_keys")
    op.drop_table("gw_ledger")
