"""Drill-down by request id; the per-day index goes (days are read from the rollups now).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_gw_ledger_request_id", "gw_ledger", ["request_id"])
    op.drop_index("ix_gw_ledger_day", table_name="gw_ledger")


def downgrade() -> None:
    op.create_index("ix_gw_ledger_day", "gw_ledger", ["day"])
    op.drop_index("ix_gw_ledger_request_id", table_name="gw_ledger")
