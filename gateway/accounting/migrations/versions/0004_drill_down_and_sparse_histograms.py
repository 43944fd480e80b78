"""Drill-down by request id (the per-day index goes: days are read from the rollups now), and the rollups'
latency histograms kept on the model rows only (nullable, NULL elsewhere: no space in PostgreSQL).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_GRAINS = ("minute", "hour", "day")
_HIST = tuple(f"lat_{kind}_{i:02d}" for kind in ("total", "ttft") for i in range(16))


def upgrade() -> None:
    op.create_index("ix_gw_ledger_request_id", "gw_ledger", ["request_id"])
    op.drop_index("ix_gw_ledger_day", table_name="gw_ledger")
    for grain in _GRAINS:
        name = f"gw_rollup_{grain}"
        with op.batch_alter_table(name) as batch:  # SQLite: a copy of the table; PostgreSQL: in place
            for column in _HIST:
                batch.alter_column(column, existing_type=sa.BigInteger(), nullable=True)
        op.execute(sa.text(f"UPDATE {name} SET {', '.join(f'{c} = NULL' for c in _HIST)} WHERE dim <> 'model'"))


def downgrade() -> None:
    for grain in _GRAINS:
        name = f"gw_rollup_{grain}"
        op.execute(sa.text(f"UPDATE {name} SET {', '.join(f'{c} = 0' for c in _HIST)} WHERE dim <> 'model'"))
        with op.batch_alter_table(name) as batch:
            for column in _HIST:
                batch.alter_column(column, existing_type=sa.BigInteger(), nullable=False)
    op.create_index("ix_gw_ledger_day", "gw_ledger", ["day"])
    op.drop_index("ix_gw_ledger_request_id", table_name="gw_ledger")
