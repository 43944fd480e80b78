"""The quality report's figures as Prometheus gauges (the monitor updates them every report interval)."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

from prometheus_client import Gauge

__all__ = ["QualityGauges"]


class QualityGauges:
    """The report's figures as Prometheus gauges; the ``route`` label only takes configured route names."""

    def __init__(self, registry: Any) -> None:
        r = registry
        self.estimate = Gauge(
            "gateway_quality_estimate",
            "Route quality relative to its reference model, (wins + ties) / samples over the last 7 days",
            ["route", "bound"],
            registry=r,
        )
        self.verdicts = Gauge(
            "gateway_quality_verdicts", "Judged samples over the last 7 days", ["route", "verdict"], registry=r
        )
        self.false_hits = Gauge(
            "gateway_quality_semantic_false_hit_rate",
            "Share of checked semantic cache hits judged wrong over the last 7 days",
            ["route", "bound"],
            registry=r,
        )
        self.spend = Gauge("gateway_quality_monitor_spend_usd", "Quality monitoring spend today (UTC)", registry=r)
        self._routes: set[str] = set()  # the routes the last update had rows for

    def update(self, rows: list[dict[str, Any]], spent: Decimal) -> None:
        """Set every gauge from the report's ``rows`` (one per route) and today's monitoring spend."""
        for gone in self._routes - {row["route"] for row in rows}:  # nothing in the window: no stale values
            for bound in ("estimate", "low", "high"):
                _set_or_drop(self.estimate, (gone, bound), None)
                _set_or_drop(self.false_hits, (gone, bound), None)
            for verdict in ("win", "tie", "loss"):
                self.verdicts.labels(gone, verdict).set(0)
        self._routes = {row["route"] for row in rows}
        for row in rows:
            route = row["route"]
            for bound, key in (("estimate", "rate"), ("low", "ci95_low"), ("high", "ci95_high")):
                # no samples in the window: no value (a stale one would keep an alert quiet)
                _set_or_drop(self.estimate, (route, bound), row["estimate"][key] if row["samples"] else None)
                checked = row["semantic_false_hits"]["checked"]
                _set_or_drop(self.false_hits, (route, bound), row["semantic_false_hits"][key] if checked else None)
            for verdict, key in (("win", "wins"), ("tie", "ties"), ("loss", "losses")):
                self.verdicts.labels(route, verdict).set(row[key])
        self.spend.set(float(spent))


def _set_or_drop(gauge: Gauge, labels: tuple[str, str], value: float | None) -> None:
    if value is not None:
        gauge.labels(*labels).set(value)
        return
    with contextlib.suppress(KeyError):  # never set
        gauge.remove(*labels)
