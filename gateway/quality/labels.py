"""Labels for adapting the router, from this deployment's verdicts and feedback, as RouteLLM-style JSONL.

Each row is ``{"prompt", "weak_score", "strong_score"}`` (the fields of the shared RouteLLM data, read by
``gateway router adapt --labels``), plus ``benchmark: "deployment"``, ``item_id`` (the request id), ``source``
(``verdict`` or ``feedback``), ``route`` and ``model``:

* a **pairwise verdict** of the served (weak) answer against the reference (strong): win -> ``(1, 0)``,
  tie -> ``(1, 1)``, loss -> ``(0, 1)``: a tie means the weak model was enough;
* **feedback** ``s`` on an answer a non-reference model served -> ``(s, 1)``: the reference is assumed to answer
  acceptably. Feedback becomes a label only where the prompt is known, i.e. the request was also sampled by
  the monitor (its verdict row keeps the prompt; the gateway stores no other request's text). Feedback on an
  answer the reference served says nothing about the weak model and is left out. Feedback meets its verdict by
  request id *and* the request's key (clients choose request ids: two keys' requests may share one), and only
  the latest feedback on a request counts (posting it again does not weigh more).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.quality.tables import feedback, verdicts

_SCORES = {"win": (1.0, 0.0), "tie": (1.0, 1.0), "loss": (0.0, 1.0)}


async def label_rows(
    engine: AsyncEngine, *, route: str | None = None, start_ms: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The labels, oldest first (see the module docstring)."""
    cond = [verdicts.c.kind == "pairwise"]
    if route is not None:
        cond.append(verdicts.c.route == route)
    if start_ms is not None:
        cond.append(verdicts.c.ts_ms >= start_ms)
    stmt = select(
        verdicts.c.request_id,
        verdicts.c.route,
        verdicts.c.model,
        verdicts.c.reference_model,
        verdicts.c.verdict,
        verdicts.c.prompt,
        verdicts.c.key_id,
    ).where(*cond)
    async with engine.connect() as conn:
        prompts: dict[tuple[str, str | None], tuple[str, str | None]] = {}
        result = await conn.stream(stmt.order_by(verdicts.c.id))
        async for request_id, rroute, model, reference, verdict, prompt, key_id in result:
            prompts[(request_id, key_id)] = (prompt, reference)
            weak, strong = _SCORES[verdict]
            yield _row(prompt, weak, strong, request_id, "verdict", rroute, model)
        fb = select(feedback.c.request_id, feedback.c.route, feedback.c.model, feedback.c.score, feedback.c.key_id)
        if route is not None:
            fb = fb.where(feedback.c.route == route)
        if start_ms is not None:
            fb = fb.where(feedback.c.ts_ms >= start_ms)
        latest: dict[tuple[str, str | None], dict[str, Any]] = {}
        async for request_id, froute, model, score, key_id in await conn.stream(fb.order_by(feedback.c.id)):
            known = prompts.get((request_id, key_id))
            if known is not None and model != known[1]:
                latest.pop((request_id, key_id), None)  # re-inserted: the rows stay in the order of the last
                latest[(request_id, key_id)] = _row(known[0], float(score), 1.0, request_id, "feedback", froute, model)
        for row in latest.values():
            yield row


def _row(
    prompt: str, weak: float, strong: float, request_id: str, source: str, route: str | None, model: str | None
) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "weak_score": weak,
        "strong_score": strong,
        "benchmark": "deployment",
        "item_id": request_id,
        "source": source,
        "route": route,
        "model": model,
    }


def open_private(path: Path) -> IO[bytes]:
    """``path`` opened for writing, readable by its owner only: labels hold the clients' prompts."""
    fh = open(path, "wb", opener=lambda name, flags: os.open(name, flags, 0o600))
    os.chmod(path, 0o600)  # a file that was there keeps its mode otherwise
    return fh


async def export_labels(
    engine: AsyncEngine, out: IO[bytes], *, route: str | None = None, start_ms: int | None = None
) -> int:
    """Write the labels to ``out`` as JSONL; the number of rows written."""
    n = 0
    async for row in label_rows(engine, route=route, start_ms=start_ms):
        out.write(orjson.dumps(row) + b"\n")
        n += 1
    return n
