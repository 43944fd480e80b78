"""Cascade routes: what the answer check decided, every attempt's cost, and what routing alone would have cost.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.accounting.schema import Money

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gw_ledger") as batch:
        batch.add_column(sa.Column("cascade", sa.String(16), comment="cascade routes: accepted | escalated"))
        batch.add_column(
            sa.Column("cascade_attempts", sa.Text, comment="cascade routes: JSON list, one entry per paid attempt")
        )
        batch.add_column(
            sa.Column("routed_cost_usd", Money(), comment="cascade routes: the prompt router's pick's cost")
        )


def downgrade() -> None:
    with op.batch_alter_table("gw_ledger") as batch:
        batch.drop_column("routed_cost_usd")
        batch.drop_column("cascade_attempts")
        batch.drop_column("cascade")
