"""Replay recorded or offline requests through routing policies, calling no backend.

Each JSONL record is a request (``{"messages": [...]}`` or ``{"prompt": "..."}``, optional ``max_tokens``)
with, where known, per-model outcomes: ``{"outcomes": {"gpt-4": {"quality": 9.0, "latency_ms": 900}}}``.
RouteLLM-style rows (``weak_score``/``strong_score``) are understood too: the weak score is the outcome of
the route's cheapest model and the strong score that of its best one. Where a chosen model has no recorded
outcome, the router's own prediction is used and counted as predicted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.constraints import Constraints
from gateway.features import extract_features
from gateway.routing import Router
from gateway.tokens import TokenCounter
from policies.router import plotting


@dataclass(slots=True)
class PolicyTotals:
    """What one policy would have done over the whole file."""

    policy: str
    requests: int = 0
    cost_usd: Decimal = Decimal(0)
    quality_sum: float = 0.0
    quality_known: int = 0
    latency_ms_sum: float = 0.0
    errors: int = 0
    models: Counter[str] = field(default_factory=Counter)

    @property
    def mean_quality(self) -> float:
        """Mean outcome quality over the requests routed (recorded where known, else predicted)."""
        return self.quality_sum / max(self.requests - self.errors, 1)

    @property
    def mean_latency_ms(self) -> float:
        """Mean predicted (or recorded) latency."""
        return self.latency_ms_sum / max(self.requests - self.errors, 1)


def _body(record: dict[str, Any], route: str) -> dict[str, Any]:
    if "messages" in record:
        messages = record["messages"]
    else:
        messages = [{"role": "user", "content": str(record.get("prompt", ""))}]
    body: dict[str, Any] = {"model": route, "messages": messages}
    if record.get("max_tokens"):
        body["max_tokens"] = int(record["max_tokens"])
    return body


def _outcomes(record: dict[str, Any], router: Router, route: str) -> dict[str, dict[str, float]]:
    outcomes: dict[str, dict[str, float]] = dict(record.get("outcomes") or {})
    if "weak_score" in record and "strong_score" in record:
        names = router.routes[route].models or []
        cheapest = min(names, key=lambda n: router.models[n].quality)
        best = max(names, key=lambda n: router.models[n].quality)
        scale = 10.0 if record.get("benchmark") in ("mmlu", "gsm8k") else 1.0  # 0/1 correctness -> 0..10
        outcomes.setdefault(cheapest, {"quality": float(record["weak_score"]) * scale})
        outcomes.setdefault(best, {"quality": float(record["strong_score"]) * scale})
    return outcomes


def replay(
    records: list[dict[str, Any]], router: Router, counter: TokenCounter, policies: list[str], route: str = "auto"
) -> list[PolicyTotals]:
    """Route every record with every policy; sum cost, quality and latency per policy."""
    totals = {p: PolicyTotals(p) for p in policies}
    for record in records:
        body = _body(record, route)
        feats = extract_features("chat", body, counter)
        outcomes = _outcomes(record, router, route)
        for name in policies:
            t = totals[name]
            t.requests += 1
            try:
                plan = router.plan(route, feats, Constraints(policy=name))
            except ValueError:
                t.errors += 1
                continue
            win = plan.decision.winner
            t.models[win.name] += 1
            t.cost_usd += win.cost_usd
            known = outcomes.get(win.name, {})
            if "quality" in known:
                t.quality_sum += known["quality"]
                t.quality_known += 1
            else:
                t.quality_sum += win.quality
            t.latency_ms_sum += known.get("latency_ms", win.latency_s * 1000)
    return list(totals.values())


def load_records(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """JSONL records (blank lines skipped).

    Raises:
        OSError: the file cannot be read. ValueError: a line is not a JSON object (naming the file and line).
    """
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
    return out


def plot(totals: list[PolicyTotals], out: Path) -> None:
    """Cost against quality per policy, as a PNG (needs the ``plot`` extra).

    Raises:
        PlottingUnavailable: matplotlib is not installed (the message says what to install).
    """
    plt = plotting.pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for t in totals:
        ax.scatter(float(t.cost_usd), t.mean_quality, s=60)
        ax.annotate(t.policy, (float(t.cost_usd), t.mean_quality), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("total cost (USD)")
    ax.set_ylabel("mean quality (0-10)")
    ax.set_title("Routing policies on replayed requests")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
