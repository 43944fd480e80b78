"""Prometheus's savings add up to the ledger's: negative savings have their own counter."""

from __future__ import annotations

from decimal import Decimal

from gateway.context import RequestContext
from gateway.metrics import Metrics


def test_net_savings_are_saved_minus_overspent() -> None:
    """A cascade's escalated answer costs more than the baseline (a negative saving): left out, the counters
    read ~47% above the ledger's net saving."""
    metrics = Metrics()
    for saved in ("0.30", "-0.05", "0"):
        ctx = RequestContext(request_id="r", endpoint="chat", body={}, requested_model="m")
        ctx.chosen_model, ctx.saved_usd, ctx.cost_usd = "m", Decimal(saved), Decimal("0.01")
        metrics.observe(ctx)
    saved = metrics.registry.get_sample_value("gateway_saved_usd_total", {"model": "m"})
    overspent = metrics.registry.get_sample_value("gateway_overspent_usd_total", {"model": "m"})
    assert saved == 0.30 and overspent == 0.05
    assert round(saved - overspent, 12) == 0.25  # the ledger's sum of saved_usd
