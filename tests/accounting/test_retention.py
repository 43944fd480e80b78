"""Retention deletes old raw rows in small batches; totals, budgets and savings stay exact (the rollups stay)."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import SqlLedger, open_database
from gateway.accounting.ledger import Row
from gateway.accounting.queries import recent_requests, request_rows, spend, totals
from gateway.accounting.schema import ledger, rollups
from gateway.auth.keys import KeyStore
from gateway.config import LedgerSettings
from tests.accounting.rollup_support import BASE_MS, random_rows, reference

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def _workload(n: int) -> list[Row]:
    return random_rows(7, n, span_ms=10 * DAY_MS, models=("m0", "m1"), with_ttft=False)


async def test_retention_keeps_totals_budgets_and_savings_exact(db_url: str) -> None:
    rows = _workload(300)
    db = await open_database(db_url, require=True)
    settings = LedgerSettings(url=db_url, retention_days=3, retention_batch_rows=7)
    led = SqlLedger(db, settings)
    for row in rows:
        led.append(dict(row))
    assert await led.flush()
    first_day = BASE_MS // DAY_MS * DAY_MS + DAY_MS  # a whole-day range, fully expired
    before = {g: await spend(db.engine, g) for g in ("model", "key", "user", "day")}
    before_total = await totals(db.engine)
    before_range = await totals(db.engine, start_ms=first_day, end_ms=first_day + 2 * DAY_MS)
    spent = {k: await KeyStore(db).spent(k) for k in ("key-0", "key-1")}

    assert led.retention is not None
    now_s = (BASE_MS + 10 * DAY_MS) / 1000
    cutoff = led.retention.cutoff_ms(now_s)
    cutoff_hour = cutoff // HOUR_MS * HOUR_MS
    kept_hours = (cutoff_hour + HOUR_MS, BASE_MS + 10 * DAY_MS)  # whole hours, read from hour and minute rows
    before_hours = await totals(db.engine, start_ms=kept_hours[0], end_ms=kept_hours[1])
    minute_rows = await _minute_rows(db.engine)
    assert any(b < cutoff_hour for b in minute_rows) and any(b >= cutoff_hour for b in minute_rows)
    expired = sum(1 for r in rows if int(str(r["ts_ms"])) < cutoff)
    assert 0 < expired < len(rows)
    assert await led.retention.run_once(now_s) == expired  # in batches of 7
    async with db.engine.connect() as conn:
        left = (await conn.execute(select(func.count()).select_from(ledger))).scalar()
        oldest = (await conn.execute(select(func.min(ledger.c.ts_ms)))).scalar()
    assert left == len(rows) - expired and oldest >= cutoff
    # the minute rollups of the hours before the cutoff's go too; the rest, the hours and the days stay
    assert await _minute_rows(db.engine) == [b for b in minute_rows if b >= cutoff_hour]
    assert led.retention.deleted_minutes == len(minute_rows) - len(await _minute_rows(db.engine))
    assert await totals(db.engine, start_ms=kept_hours[0], end_ms=kept_hours[1]) == before_hours

    assert {g: await spend(db.engine, g) for g in before} == before
    assert await totals(db.engine) == before_total
    assert before_total.saved_usd == sum((Decimal(str(r["saved_usd"])) for r in rows), Decimal(0))
    assert await totals(db.engine, start_ms=first_day, end_ms=first_day + 2 * DAY_MS) == before_range
    assert {k: await KeyStore(db).spent(k) for k in spent} == spent
    assert await led.retention.run_once(now_s) == 0
    await led.aclose()


async def _minute_rows(engine: AsyncEngine) -> list[int]:
    table = rollups["minute"]
    async with engine.connect() as conn:
        return sorted((await conn.execute(select(table.c.bucket_ms))).scalars())


async def test_retention_keeps_the_current_hours_minutes(db_url: str) -> None:
    """A retention shorter than an hour leaves the minutes a range ending now reads (they are of this hour)."""
    rows = [r for r in _workload(200) if int(str(r["ts_ms"])) < BASE_MS + DAY_MS]
    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url, retention_days=0.01, retention_batch_rows=5))
    for row in rows:
        led.append(dict(row))
    assert await led.flush()
    now_ms = max(int(str(r["ts_ms"])) for r in rows) + 1_000
    hour = now_ms // HOUR_MS * HOUR_MS
    minute_rows = await _minute_rows(db.engine)
    this_hour = [b for b in minute_rows if b >= hour]
    before = await totals(db.engine, start_ms=hour, end_ms=now_ms)
    assert led.retention is not None
    await led.retention.run_once(now_ms / 1000)
    left = await _minute_rows(db.engine)
    assert [b for b in left if b >= hour] == this_hour and this_hour
    cutoff_hour = led.retention.cutoff_ms(now_ms / 1000) // HOUR_MS * HOUR_MS
    assert left == [b for b in minute_rows if b >= cutoff_hour] and len(left) < len(minute_rows)
    assert await totals(db.engine, start_ms=hour, end_ms=now_ms) == before
    await led.aclose()


async def test_drill_down_reads_raw_rows(db_url: str) -> None:
    rows = _workload(40)
    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url))
    for row in rows:
        led.append(dict(row))
    assert await led.flush()
    found = await request_rows(db.engine, "req-5")
    assert [r["row_key"] for r in found] == [rows[5]["row_key"]]
    assert found[0]["cost_usd"] == f"{rows[5]['cost_usd']:f}"
    recent = await recent_requests(db.engine, key_id="key-0", limit=5)
    expected = sorted((r for r in rows if r["key_id"] == "key-0"), key=lambda r: -int(str(r["ts_ms"])))[:5]
    assert [r["request_id"] for r in recent] == [r["request_id"] for r in expected]
    assert await request_rows(db.engine, "nope") == []
    await led.aclose()


async def test_drill_down_endpoints(db_url: str, master_key: str, redis_prefix: str) -> None:
    from tests.accounting.conftest import auth_header, chat, gateway_client, make_settings

    admin = auth_header(master_key)
    async with gateway_client(make_settings(db_url, auth=True, redis_prefix=redis_prefix)) as (client, _gw):
        r = await client.post("/v1/chat/completions", json=chat("hosted-a", max_tokens=3), headers=admin)
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        recent = await client.get("/admin/requests", params={"limit": 5}, headers=admin)
        assert recent.status_code == 200, recent.text
        assert [row["request_id"] for row in recent.json()["data"]] == [request_id]
        one = await client.get(f"/admin/requests/{request_id}", headers=admin)
        assert one.status_code == 200 and one.json()["data"][0]["chosen_model"] == "hosted-a"
        assert (await client.get("/admin/requests/unknown", headers=admin)).status_code == 404
        bad = await client.get("/admin/requests", params={"limit": "0"}, headers=admin)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
        bad = await client.get("/admin/requests", params={"before": "soon"}, headers=admin)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "before"
        assert (await client.get("/admin/requests")).status_code == 401


async def test_dashboard_data_adds_up(db_url: str) -> None:
    from gateway.accounting.queries import dashboard

    rows = _workload(200)
    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url))
    for row in rows:
        led.append(dict(row))
    assert await led.flush()
    start, end = BASE_MS + 3_600_123, BASE_MS + 5 * DAY_MS + 7
    body = await dashboard(db.engine, start_ms=start, end_ms=end)
    await led.aclose()
    by_model = reference(rows, "model", start, end)
    assert body["totals"]["requests"] == sum(v[0] for v in by_model.values())
    assert Decimal(body["totals"]["cost_usd"]) == sum((v[3] for v in by_model.values()), Decimal(0))
    assert {m["group"]: m["requests"] for m in body["by_model"]} == {k: v[0] for k, v in by_model.items()}
    series: dict[str, Decimal] = {}
    for point in body["timeseries"]:
        assert start // 86_400_000 * 86_400_000 <= point["bucket"] < end
        series[point["model"]] = series.get(point["model"], Decimal(0)) + Decimal(point["cost_usd"])
    assert series == {k: v[3] for k, v in by_model.items()}
    assert [k["group"] for k in body["top_keys"]] == [
        g for g, _ in sorted(reference(rows, "key", start, end).items(), key=lambda kv: (-kv[1][3], -kv[1][0]))
    ]
    assert set(body["latency"]) == {"m0", "m1"}


async def test_the_dashboard_draws_an_expired_range_from_the_hour_rollups(db_url: str) -> None:
    """A range of 15 h or less in the expired past drew an empty chart (buckets of minutes, whose rollups retention
    deletes) beside correct totals: its buckets are whole hours now."""
    from gateway.accounting.queries import dashboard

    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url, retention_days=3, retention_batch_rows=500))
    for row in _workload(300):
        led.append(dict(row))
    assert await led.flush()
    assert led.retention is not None
    await led.retention.run_once((BASE_MS + 10 * DAY_MS) / 1000)
    start = BASE_MS // DAY_MS * DAY_MS + DAY_MS  # twelve whole hours of an expired day
    drawn = await dashboard(db.engine, start_ms=start, end_ms=start + 12 * HOUR_MS, retention_days=3)
    await led.aclose()
    assert drawn["range"]["bucket_s"] == 3600
    assert drawn["totals"]["requests"] > 0
    assert sum(point["requests"] for point in drawn["timeseries"]) == drawn["totals"]["requests"]
