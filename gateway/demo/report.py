"""The demo's report: what the workload cost and how it was served, read back from the ledger.

Every figure about requests, spend, savings, cache hits and backend latency comes from the ledger rows the
gateway wrote (the same queries as ``gateway spend`` and the dashboard), restricted to the demo's time
window; the client's own measurements (status codes, end-to-end latency) are shown beside them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import SqlLedger
from gateway.accounting import queries as q


@dataclass(slots=True)
class ClientResult:
    """What the workload driver saw for one request."""

    kind: str
    status: int
    model: str
    cache: str
    seconds: float
    ttft_seconds: float | None = None
    error: str | None = None


@dataclass(slots=True)
class ModelLine:
    """One backend's share of the workload."""

    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    baseline_cost_usd: Decimal
    cache_hits: int
    errors: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    ttft_p50_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (money as decimal strings)."""
        return {
            "model": self.model,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": q.money(self.cost_usd),
            "baseline_cost_usd": q.money(self.baseline_cost_usd),
            "cache_hits": self.cache_hits,
            "errors": self.errors,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "ttft_p50_ms": self.ttft_p50_ms,
        }


@dataclass(slots=True)
class DemoReport:
    """The whole report (ledger figures plus the client's view)."""

    start_ms: int
    end_ms: int
    requests: int
    cost_usd: Decimal
    baseline_cost_usd: Decimal
    cache_hits: int
    errors: int
    models: list[ModelLine]
    client_ok: int
    client_failed: int
    wall_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def savings_usd(self) -> Decimal:
        """What the workload would have cost on GPT-4 alone, minus what it cost."""
        return self.baseline_cost_usd - self.cost_usd

    @property
    def savings_share(self) -> float:
        """Savings as a share of the all-GPT-4 cost."""
        return float(self.savings_usd / self.baseline_cost_usd) if self.baseline_cost_usd else 0.0

    @property
    def cache_hit_rate(self) -> float:
        """Cache hits over requests."""
        return self.cache_hits / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (money as decimal strings)."""
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "requests": self.requests,
            "cost_usd": q.money(self.cost_usd),
            "baseline_cost_usd": q.money(self.baseline_cost_usd),
            "savings_usd": q.money(self.savings_usd),
            "savings_share": round(self.savings_share, 6),
            "cache_hits": self.cache_hits,
            "cache_hit_rate": round(self.cache_hit_rate, 6),
            "errors": self.errors,
            "models": [m.to_json() for m in self.models],
            "client": {"ok": self.client_ok, "failed": self.client_failed, "wall_seconds": self.wall_seconds},
            **self.extra,
        }


async def wait_for_rows(ledger: SqlLedger, start_ms: int, expected: int, patience_s: float = 15.0) -> int:
    """Flush the ledger until it holds ``expected`` rows since ``start_ms`` (or ``patience_s`` pass)."""
    deadline = time.monotonic() + patience_s
    while True:
        await ledger.flush()
        found = (await q.totals(ledger.db.engine, start_ms=start_ms)).requests
        if found >= expected or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def build_report(
    engine: AsyncEngine, start_ms: int, end_ms: int, results: list[ClientResult], wall_seconds: float
) -> DemoReport:
    """Query the ledger for the demo's window and combine it with the client's results."""
    total = await q.totals(engine, start_ms=start_ms, end_ms=end_ms)
    by_model = await q.spend(engine, "model", start_ms=start_ms, end_ms=end_ms)
    latency = await q.latency(engine, start_ms=start_ms, end_ms=end_ms, sample_rows=100_000)
    lines = []
    for row in by_model:
        lat = latency.get(row.group or "", {})
        lines.append(
            ModelLine(
                model=row.group or "(none)",
                requests=row.requests,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                cost_usd=row.cost_usd,
                baseline_cost_usd=row.baseline_cost_usd,
                cache_hits=row.cache_hits,
                errors=row.errors,
                p50_ms=lat.get("p50_ms"),
                p95_ms=lat.get("p95_ms"),
                ttft_p50_ms=lat.get("ttft_p50_ms"),
            )
        )
    lines.sort(key=lambda m: (-m.requests, m.model))
    ok = sum(1 for r in results if r.status < 400 and r.error is None)
    return DemoReport(
        start_ms=start_ms,
        end_ms=end_ms,
        requests=total.requests,
        cost_usd=total.cost_usd,
        baseline_cost_usd=total.baseline_cost_usd,
        cache_hits=total.cache_hits,
        errors=total.errors,
        models=lines,
        client_ok=ok,
        client_failed=len(results) - ok,
        wall_seconds=round(wall_seconds, 3),
    )


def _usd(value: Decimal) -> str:
    return f"${value:,.4f}" if abs(value) >= Decimal("0.01") else f"${value:,.6f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def render_report(report: DemoReport, console: Console, *, time_scale: float) -> None:
    """Print the report as tables."""
    table = Table(title="Requests, spend and latency per backend (from the ledger)", title_justify="left")
    for col in (
        "backend",
        "requests",
        "share",
        "tokens in/out",
        "cost",
        "on GPT-4",
        "cache hits",
        "p50 ms",
        "p95 ms",
        "TTFT p50",
    ):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for m in report.models:
        share = f"{m.requests / report.requests:.0%}" if report.requests else "-"
        table.add_row(
            m.model,
            f"{m.requests:,}",
            share,
            f"{m.prompt_tokens:,}/{m.completion_tokens:,}",
            _usd(m.cost_usd),
            _usd(m.baseline_cost_usd),
            f"{m.cache_hits:,}",
            _ms(m.p50_ms),
            _ms(m.p95_ms),
            _ms(m.ttft_p50_ms),
        )
    console.print(table)
    console.print(
        f"Total: {report.requests:,} requests, cost {_usd(report.cost_usd)}; "
        f"all on GPT-4 it would have cost {_usd(report.baseline_cost_usd)}."
    )
    console.print(f"[bold green]Savings against all-GPT-4: {_usd(report.savings_usd)} ({report.savings_share:.1%})[/]")
    console.print(
        f"Cache hit rate: {report.cache_hit_rate:.1%} ({report.cache_hits:,} of {report.requests:,} answered "
        "from the cache, at no cost)"
    )
    console.print(
        f"Client view: {report.client_ok:,} ok, {report.client_failed:,} failed, in {report.wall_seconds:.1f} s; "
        f"ledger errors: {report.errors:,}."
    )
    if time_scale != 1.0:
        console.print(
            f"[dim]Simulated backends ran at --time-scale {time_scale:g}: their latencies are {1 / time_scale:g}x "
            "shorter than the profiles' real-world figures. Local models are costed by GPU-hour at their "
            "measured throughput, GPT-4 at its list price.[/]"
        )
