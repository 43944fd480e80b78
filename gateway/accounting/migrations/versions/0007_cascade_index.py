"""The cascade report's index: the ledger's cascade rows by time (a partial index, only those rows).

Without it the dashboard's cascade report (``WHERE cascade IS NOT NULL AND ts_ms in range``) read every raw
row of the range through the time index; with it, only the cascade rows.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ONLY_CASCADE = sa.text("cascade IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_gw_ledger_cascade_ts",
        "gw_ledger",
        ["ts_ms"],
        postgresql_where=_ONLY_CASCADE,
        sqlite_where=_ONLY_CASCADE,
    )


def downgrade() -> None:
    op.drop_index("ix_gw_ledger_cascade_ts", table_name="gw_ledger")
