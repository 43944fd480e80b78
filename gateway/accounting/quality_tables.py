"""The quality monitor's tables, beside the ledger in its database: verdicts and feedback.

``gw_quality_verdicts``: one row per judged sample. ``kind`` is ``pairwise`` (the served answer against the
route's reference model; ``verdict`` win/tie/loss, with each order's raw ``[[A]]/[[B]]/[[C]]``) or ``semantic``
(a semantic cache decision; ``verdict`` correct/wrong, ``served`` whether the hit was served). ``prompt`` is the
routing prompt (the last user message), kept because adapting the router needs it. Costs are the monitor's own
calls, which the ledger also holds as rows with ``policy = 'monitor'``.

``gw_feedback``: one row per ``POST /v1/feedback``, with the route and model the ledger row names.

Created by the ledger's Alembic revision ``0003`` (its own frozen column list); these declarations are what
the queries use.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table
from sqlalchemy.types import TypeEngine

from gateway.accounting.schema import CleanString, CleanText, Money

metadata = MetaData()


def _id() -> TypeEngine[int]:
    return BigInteger().with_variant(Integer(), "sqlite")  # SQLite only auto-increments an INTEGER PRIMARY KEY


verdicts = Table(
    "gw_quality_verdicts",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False, comment="epoch milliseconds of the judged request"),
    Column("day", String(10), nullable=False, comment="UTC date of the judging (the budget's day)"),
    Column("request_id", CleanString(128), nullable=False),
    Column("kind", String(16), nullable=False, comment="pairwise | semantic"),
    Column("route", CleanString(128)),
    Column("model", CleanString(256), comment="the model that served the answer judged"),
    Column("reference_model", CleanString(256)),
    Column("judge_model", CleanString(256)),
    Column("verdict", String(8), nullable=False, comment="win|tie|loss (pairwise), correct|wrong (semantic)"),
    Column("served", Boolean, nullable=False, comment="semantic: the hit was served (else explored)"),
    Column("first_order", String(1), comment="pairwise: the verdict with the served answer as A"),
    Column("second_order", String(1), comment="pairwise: the verdict with the served answer as B"),
    Column("score", Float, comment="semantic: the candidate's similarity"),
    Column("prompt", CleanText, nullable=False),
    Column("key_id", CleanString(64)),
    Column("reference_cost_usd", Money(), nullable=False),
    Column("judge_cost_usd", Money(), nullable=False),
)
Index("ix_gw_quality_verdicts_ts", verdicts.c.ts_ms)
Index("ix_gw_quality_verdicts_day", verdicts.c.day)
Index("ix_gw_quality_verdicts_request", verdicts.c.request_id)

feedback = Table(
    "gw_feedback",
    metadata,
    Column("id", _id(), primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("request_id", CleanString(128), nullable=False),
    Column("key_id", CleanString(64)),
    Column("team", CleanString(128)),
    Column("route", CleanString(128)),
    Column("model", CleanString(256)),
    Column("score", Float, nullable=False),
    Column("comment", CleanText),
)
Index("ix_gw_feedback_ts", feedback.c.ts_ms)
Index("ix_gw_feedback_request", feedback.c.request_id)
