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

**One key cannot speak for everyone** (``quality.max_label_share_per_key``, default 0.2). Feedback is the
clients' say, so a client that sends many prompts of one kind and thumbs them down would move the adapted
router for every client. The feedback labels of one export are therefore capped per *tenant*: a key, or a team
(its keys give feedback on each other's requests: one tenant). With ``K`` tenants holding ``n_1 .. n_K``
feedback labels, each keeps at most its **latest** ``L`` labels, ``L`` the largest integer with
``min(n_i, L) <= s * sum_j min(n_j, L)`` for every tenant, where ``s = max(share, 1 / K)`` (:func:`cap_shares`):
no tenant holds more than ``s`` of the feedback labels kept, and a tenant under the bound keeps all of its own.
With one tenant (one key, one team, or virtual keys off) ``s`` is 1 and nothing is capped: a single-app
deployment adapts on all its feedback; with two, each keeps as many as the smaller gave (no share below one
half can hold for both). Judge verdicts are the gateway's own evaluation, not the clients': never capped.

``K`` counts every tenant whose requests gave labels, judged ones too: a tenant that is the only one to give
feedback, in a deployment of several, is not alone (its feedback was uncapped, whatever it sent). No share of the
feedback can bound a lone giver (it holds all of it), so its feedback is bounded by the labels of the export
instead: at most ``L`` with ``L <= s * (V + L)``, ``V`` the verdict labels of the other tenants' requests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting.quality_tables import feedback, verdicts
from gateway.accounting.schema import api_keys

log = logging.getLogger("gateway.quality")

_SCORES = {"win": (1.0, 0.0), "tie": (1.0, 1.0), "loss": (0.0, 1.0)}
#: ``quality.max_label_share_per_key``'s default.
DEFAULT_MAX_LABEL_SHARE = 0.2

_T = TypeVar("_T", bound=Hashable)


@dataclass
class LabelCounts:
    """What one export wrote: ``rows`` in all, and ``capped`` feedback labels left out by the per-key share."""

    rows: int = 0
    capped: int = 0


def cap_shares(counts: Mapping[_T, int], share: float, verdicts: Mapping[_T, int] | None = None) -> dict[_T, int]:
    """How many feedback labels each tenant keeps, given how many it has (``counts``) and the share one tenant may
    hold (``quality.max_label_share_per_key``): at most ``L`` each, ``L`` the largest integer for which no tenant
    holds more than ``max(share, 1 / K)`` of the labels kept (``K`` tenants with labels: feedback, or judged ones,
    ``verdicts`` by tenant; a lone feedback giver among them is bounded against the others' judged labels: see the
    module docstring)."""
    sizes = {tenant: n for tenant, n in counts.items() if n > 0}
    k = tenant_count(counts, verdicts)
    if not sizes or k <= 1:
        return dict(counts)
    bound = max(share, 1.0 / k)
    if bound >= 1.0:
        return dict(counts)
    judged = sum(n for t, n in (verdicts or {}).items() if t not in sizes) if len(sizes) == 1 else 0

    def holds(limit: int) -> bool:  # the largest tenant kept (limit, or all when fewer) within its share
        kept = judged + sum(min(n, limit) for n in sizes.values())
        return min(limit, largest) <= bound * kept * (1 + 1e-12)

    # L = 0 holds. bound * (judged + sum(min(n, L))) - min(L, largest) is concave in L, so the L that hold are one
    # interval from 0: bisect for its end (with several givers it reaches at least the smallest count).
    largest = max(sizes.values())
    low, high = 0, largest
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if holds(mid) else (low, mid - 1)
    return {tenant: min(n, low) for tenant, n in counts.items()}


def tenant_count(counts: Mapping[_T, int], verdicts: Mapping[_T, int] | None = None) -> int:
    """How many tenants gave labels: feedback (``counts``) or judged requests (``verdicts``)."""
    return len({t for t, n in counts.items() if n > 0} | {t for t, n in (verdicts or {}).items() if n > 0})


def _tenant(key_id: str | None, team: str | None) -> str | None:
    """Who gave a feedback label: the team of the request's key, else the key (None: keys off)."""
    return f"team:{team}" if team else (None if key_id is None else f"key:{key_id}")


async def label_rows(
    engine: AsyncEngine,
    *,
    route: str | None = None,
    start_ms: int | None = None,
    max_share: float | None = DEFAULT_MAX_LABEL_SHARE,
    counts: LabelCounts | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """The labels, oldest first (see the module docstring); ``max_share``: the per-key cap on feedback labels
    (None or 1: none). ``counts``, when given, learns how many feedback labels the cap left out."""
    cond = [verdicts.c.kind == "pairwise"]
    if route is not None:
        cond.append(verdicts.c.route == route)
    if start_ms is not None:
        cond.append(verdicts.c.ts_ms >= start_ms)
    stmt = (
        select(
            verdicts.c.request_id,
            verdicts.c.route,
            verdicts.c.model,
            verdicts.c.reference_model,
            verdicts.c.verdict,
            verdicts.c.prompt,
            verdicts.c.key_id,
            api_keys.c.team,
        )
        .select_from(verdicts.outerjoin(api_keys, api_keys.c.id == verdicts.c.key_id))
        .where(*cond)
    )
    async with engine.connect() as conn:
        prompts: dict[tuple[str, str | None], tuple[str, str | None]] = {}
        judged: dict[str | None, str | None] = {}  # the keys whose requests were judged, and their teams
        per_key: dict[str | None, int] = {}
        result = await conn.stream(stmt.order_by(verdicts.c.id))
        async for request_id, rroute, model, reference, verdict, prompt, key_id, team in result:
            prompts[(request_id, key_id)] = (prompt, reference)
            judged[key_id] = team
            per_key[key_id] = per_key.get(key_id, 0) + 1
            weak, strong = _SCORES[verdict]
            yield _row(prompt, weak, strong, request_id, "verdict", rroute, model)
        fb = select(
            feedback.c.request_id,
            feedback.c.route,
            feedback.c.model,
            feedback.c.score,
            feedback.c.key_id,
            feedback.c.team,
        )
        if route is not None:
            fb = fb.where(feedback.c.route == route)
        if start_ms is not None:
            fb = fb.where(feedback.c.ts_ms >= start_ms)
        latest: dict[tuple[str, str | None], tuple[str | None, dict[str, Any]]] = {}
        async for request_id, froute, model, score, key_id, team in await conn.stream(fb.order_by(feedback.c.id)):
            if team and not judged.get(key_id, team):
                judged[key_id] = team  # a key gone from the keys table: its team as its feedback says
            known = prompts.get((request_id, key_id))
            if known is not None and model != known[1]:
                latest.pop((request_id, key_id), None)  # re-inserted: the rows stay in the order of the last
                row = _row(known[0], float(score), 1.0, request_id, "feedback", froute, model)
                latest[(request_id, key_id)] = (_tenant(key_id, team), row)
        by_tenant: dict[str | None, int] = {}
        for key_id, n in per_key.items():
            tenant = _tenant(key_id, judged[key_id])
            by_tenant[tenant] = by_tenant.get(tenant, 0) + n
        for row in _capped(list(latest.values()), max_share, counts, verdicts=by_tenant):
            yield row


def _capped(
    labels: list[tuple[str | None, dict[str, Any]]],
    max_share: float | None,
    counts: LabelCounts | None,
    verdicts: Mapping[str | None, int] | None = None,
) -> list[dict[str, Any]]:
    """``labels`` (tenant, row; oldest first) less each tenant's oldest beyond :func:`cap_shares`' bound."""
    if max_share is None or not labels:
        return [row for _, row in labels]
    have: dict[str | None, int] = {}
    for tenant, _ in labels:
        have[tenant] = have.get(tenant, 0) + 1
    keep = cap_shares(have, max_share, verdicts)
    skip = {tenant: have[tenant] - keep[tenant] for tenant in have}  # the oldest ones go
    out: list[dict[str, Any]] = []
    for tenant, row in labels:
        if skip[tenant] > 0:
            skip[tenant] -= 1
            continue
        out.append(row)
    left_out = len(labels) - len(out)
    if left_out:
        capped = {t: have[t] - keep[t] for t in have if keep[t] < have[t]}
        log.info(
            "%d feedback labels left out by quality.max_label_share_per_key=%s (%d tenants; over their share: %s)",
            left_out,
            max_share,
            tenant_count(have, verdicts),
            ", ".join(f"{t or 'no key'} -{n}" for t, n in capped.items()),
        )
    if counts is not None:
        counts.capped += left_out
    return out


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
    engine: AsyncEngine,
    out: IO[bytes],
    *,
    route: str | None = None,
    start_ms: int | None = None,
    max_share: float | None = DEFAULT_MAX_LABEL_SHARE,
    counts: LabelCounts | None = None,
) -> int:
    """Write the labels to ``out`` as JSONL (feedback capped per key at ``max_share``: the module docstring); the
    number of rows written (also added to ``counts.rows``, with the feedback labels the cap left out)."""
    n = 0
    async for row in label_rows(engine, route=route, start_ms=start_ms, max_share=max_share, counts=counts):
        out.write(orjson.dumps(row) + b"\n")
        n += 1
    if counts is not None:
        counts.rows += n
    return n
