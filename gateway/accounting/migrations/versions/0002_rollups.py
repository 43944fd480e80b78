"""Rollups per minute, hour and day (per key, and per model, route, team and user), backfilled from the ledger.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from gateway.accounting.rollup import backfill
from gateway.accounting.schema import MoneySum

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen here: a later revision that changes the rollups must not change what this one created.
_GRAINS = ("minute", "hour", "day")
_BOUNDS_MS = (25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 8000, 15000, 30000)
_COUNTS = ("requests", "prompt_tokens", "completion_tokens", "cache_hits", "errors")
_MONEY = ("cost_usd", "baseline_cost_usd", "saved_usd")
_HIST = tuple(f"lat_{kind}_{i:02d}" for kind in ("total", "ttft") for i in range(len(_BOUNDS_MS) + 1))


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("dim", sa.String(8), primary_key=True, comment="total, model, route, team or user"),
        sa.Column("bucket_ms", sa.BigInteger, primary_key=True, comment="bucket start, epoch ms"),
        sa.Column("key_id", sa.String(64), primary_key=True, comment="'' when the request had no key"),
        sa.Column("value", sa.String(256), primary_key=True, comment="the dimension's value; '' for none"),
        *(sa.Column(c, sa.BigInteger, nullable=False) for c in _COUNTS),
        *(sa.Column(c, MoneySum(), nullable=False) for c in _MONEY),
        *(sa.Column(c, sa.BigInteger, nullable=False) for c in _HIST),
    ]


def upgrade() -> None:
    tables: dict[str, sa.Table] = {}
    for grain in _GRAINS:
        name = f"gw_rollup_{grain}"
        tables[grain] = op.create_table(name, *_columns())
        op.create_index(f"ix_{name}_key", name, ["key_id", "dim", "bucket_ms"])
    backfill(op.get_bind(), tables, _BOUNDS_MS, hist_every_dim=True)  # as 0002 first did (0004 thins them)


def downgrade() -> None:
    for grain in _GRAINS:
        op.drop_table(f"gw_rollup_{grain}")
