"""The dashboard's "all time" range (no start) must cover the hours whose minute rollups retention deleted."""

from __future__ import annotations

from gateway.accounting import SqlLedger, open_database
from gateway.accounting.queries import dashboard, totals
from gateway.config import LedgerSettings
from tests.accounting.rollup_support import BASE_MS, random_rows

DAY_MS = 86_400_000


async def test_dashboard_all_time_keeps_expired_hours(db_url: str) -> None:
    rows = random_rows(7, 300, span_ms=10 * DAY_MS, models=("m0", "m1"), with_ttft=False)
    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url, retention_days=3, retention_batch_rows=50))
    for row in rows:
        led.append(dict(row))
    assert await led.flush()
    assert led.retention is not None
    await led.retention.run_once((BASE_MS + 10 * DAY_MS) / 1000)  # raw rows and minutes older than 3 days go

    everything = await totals(db.engine)  # what /admin/spend, /v1/spend and `gateway spend` show with no start
    assert everything.requests == len(rows)
    data = await dashboard(db.engine, start_ms=None, end_ms=None)  # /admin/dashboard/data, "all time"
    assert data["totals"]["requests"] == everything.requests
    assert data["totals"]["cost_usd"] == f"{everything.cost_usd:f}"
    assert data["totals"]["saved_usd"] == f"{everything.saved_usd:f}"
    await led.aclose()
