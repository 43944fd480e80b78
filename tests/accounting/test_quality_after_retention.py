"""/admin/quality after retention: a route's estimate must not treat expired traffic as all "served by others"."""

from __future__ import annotations

from decimal import Decimal

from gateway.accounting import SqlLedger, open_database
from gateway.accounting.quality_tables import verdicts
from gateway.config import LedgerSettings
from gateway.quality.report import quality_report
from tests.accounting.rollup_support import BASE_MS, Spec, make_row

DAY_MS = 86_400_000


def _spec(offset_ms: int, model: str) -> Spec:
    return Spec(offset_ms, None, model, None, None, "auto", 10, 10, 10**6, 10**7, 200, "miss", 100.0, 50.0)


async def test_route_estimate_after_retention(db_url: str) -> None:
    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url, retention_days=3, retention_batch_rows=50))
    # day 0: the route's reference answered 9 requests, the cheap model 1, and that one was judged a loss
    for i in range(10):
        led.append(make_row(_spec(i * 1000, "big" if i else "cheap"), i))
    assert await led.flush()
    async with db.engine.begin() as conn:
        await conn.execute(
            verdicts.insert(),
            [
                {
                    "ts_ms": BASE_MS,
                    "day": "2026-03-01",
                    "request_id": "req-0",
                    "kind": "pairwise",
                    "route": "auto",
                    "model": "cheap",
                    "reference_model": "big",
                    "judge_model": "big",
                    "verdict": "loss",
                    "served": True,
                    "prompt": "p",
                    "key_id": None,
                    "reference_cost_usd": Decimal("0.001"),
                    "judge_cost_usd": Decimal("0.002"),
                }
            ],
        )
    window = {"start_ms": BASE_MS - DAY_MS, "end_ms": BASE_MS + DAY_MS}
    before = (await quality_report(db.engine, "route", reference={"auto": "big"}, **window))[0]
    assert abs(before["served_by_others"] - 0.1) < 1e-9
    assert abs(before["estimate"]["rate"] - 0.9) < 1e-9  # 1 - 0.1 * (1 - 0)

    assert led.retention is not None
    await led.retention.run_once((BASE_MS + 10 * DAY_MS) / 1000)  # the raw rows expire; verdicts are kept
    after = (await quality_report(db.engine, "route", reference={"auto": "big"}, **window))[0]
    assert after["samples"] == 1  # the verdict is still reported ...
    # ... so its estimate must either still be the route's figure, or not be given at all
    assert after["estimate"]["rate"] is None or abs(after["estimate"]["rate"] - 0.9) < 1e-9
    await led.aclose()
