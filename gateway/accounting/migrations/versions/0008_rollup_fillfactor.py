"""Room for the writer's updates in the hour and day rollups (PostgreSQL: ``fillfactor`` 50).

Every write transaction adds to the rollup rows of the current hour and day (``ON CONFLICT DO UPDATE``), so
those rows are updated over and over. With full pages each update writes its new row version to another page
and a new entry into both of the table's indexes; with half of each page kept free the update stays on its
page without touching the indexes (a HOT update). Measured with 200-row transactions (``bench/RESULTS.md``):
the rollup upserts took about a third less time. The two tables are small (a row per hour or day per key and
value), so the space costs little; the minute rollups, by far the largest, keep full pages. Pages written
before this revision keep theirs until the table is rewritten. SQLite has no such setting: nothing changes.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TABLES = ("gw_rollup_hour", "gw_rollup_day")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            op.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
