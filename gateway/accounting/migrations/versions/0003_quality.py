"""The quality monitor's verdicts and the clients' feedback (``gateway.accounting.quality_tables``).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.accounting.schema import Money

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "gw_quality_verdicts",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False, comment="epoch milliseconds of the judged request"),
        sa.Column("day", sa.String(10), nullable=False, comment="UTC date of the judging (the budget's day)"),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, comment="pairwise | semantic"),
        sa.Column("route", sa.String(128)),
        sa.Column("model", sa.String(256), comment="the model that served the answer judged"),
        sa.Column("reference_model", sa.String(256)),
        sa.Column("judge_model", sa.String(256)),
        sa.Column("verdict", sa.String(8), nullable=False, comment="win|tie|loss (pairwise), correct|wrong (semantic)"),
        sa.Column("served", sa.Boolean, nullable=False, comment="semantic: the hit was served (else explored)"),
        sa.Column("first_order", sa.String(1), comment="pairwise: the verdict with the served answer as A"),
        sa.Column("second_order", sa.String(1), comment="pairwise: the verdict with the served answer as B"),
        sa.Column("score", sa.Float, comment="semantic: the candidate's similarity"),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("reference_cost_usd", Money(), nullable=False),
        sa.Column("judge_cost_usd", Money(), nullable=False),
    )
    op.create_index("ix_gw_quality_verdicts_ts", "gw_quality_verdicts", ["ts_ms"])
    op.create_index("ix_gw_quality_verdicts_day", "gw_quality_verdicts", ["day"])
    op.create_index("ix_gw_quality_verdicts_request", "gw_quality_verdicts", ["request_id"])
    op.create_table(
        "gw_feedback",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("team", sa.String(128)),
        sa.Column("route", sa.String(128)),
        sa.Column("model", sa.String(256)),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("comment", sa.Text),
    )
    op.create_index("ix_gw_feedback_ts", "gw_feedback", ["ts_ms"])
    op.create_index("ix_gw_feedback_request", "gw_feedback", ["request_id"])


def downgrade() -> None:
    op.drop_table("gw_feedback")
    op.drop_table("gw_quality_verdicts")
