"""Stored responses of ``/v1/responses`` when no Redis is configured (``gateway.frontdoors.sql_store``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gw_stored_responses",
        sa.Column("tenant", sa.String(64), primary_key=True, comment="the virtual key's id, '-' with keys off"),
        sa.Column("response_id", sa.String(64), primary_key=True),
        sa.Column("expires_ms", sa.BigInteger, nullable=False, comment="epoch milliseconds"),
        sa.Column("record", sa.Text, nullable=False, comment="JSON: the response and the conversation"),
    )
    op.create_index("ix_gw_stored_responses_expires", "gw_stored_responses", ["expires_ms"])


def downgrade() -> None:
    op.drop_table("gw_stored_responses")
