"""The ledger's totals equal tokens x price for a known workload, exactly, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import select

from gateway.accounting import SqlLedger
from gateway.accounting.migrate import current_revision, head_revision
from gateway.accounting.schema import ledger
from gateway.context import RequestContext
from gateway.pricing import local_price
from tests.accounting.conftest import GPT4, GPT4O, PRICES, chat, gateway_client, make_settings
from tests.accounting.fakes import DictCache
from tests.accounting.upstream import completion_tokens, prompt_tokens


def cost(price: tuple[Decimal, Decimal], p: int, c: int) -> Decimal:
    return price[0] * p + price[1] * c


async def wait_rows(client: httpx.AsyncClient, n: int) -> dict[str, Any]:
    """Poll the spend API until ``n`` requests are in the ledger (rows are written in the background)."""
    body: dict[str, Any] = {}
    for _ in range(200):
        r = await client.get("/admin/spend", params={"group_by": "model"})
        assert r.status_code == 200, r.text
        body = r.json()
        if body["totals"]["requests"] >= n:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"ledger has {body['totals']['requests']} rows, expected {n}")


async def test_ledger_totals_equal_tokens_times_price(db_url: str, master_key: str) -> None:
    settings = make_settings(db_url, auth=True)
    async with gateway_client(settings) as (client, gw):
        client.headers["authorization"] = f"Bearer {master_key}"  # admin needs it (and it turns auth on)
        gw.pipeline.cache = DictCache()
        sent: list[tuple[str, dict[str, Any], int]] = []  # (model, body, expected status)

        async def send(body: dict[str, Any], status: int = 200) -> httpx.Response:
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == status, r.text
            sent.append((body["model"], body, status))
            return r

        await send(chat("hosted-a", "one two three", max_tokens=5, user="alice"))
        await send(chat("hosted-a", "a much longer prompt with many words in it", max_tokens=40, user="bob"))
        r = await send(chat("hosted-a", "streamed please", stream=True, max_tokens=12, user="alice"))
        assert r.text.endswith("data: [DONE]\n\n")
        await send(chat("hosted-a", "streamed again", stream=True, max_tokens=3))
        await send(chat("gpt4o", "priced by litellm", max_tokens=9))
        await send(chat("hosted-nousage", "count these tokens yourself", max_tokens=6))
        await send(chat("hosted-nousage", "and these streamed", stream=True, max_tokens=7))
        await send(chat("broken", "fails upstream"), status=502)
        await send(chat("no-such-model", "unknown"), status=404)
        cached = chat("hosted-a", "cache me", max_tokens=4)
        await send(cached)
        r = await send(cached)
        assert r.headers["x-gateway-cache"] == "hit"
        await send(chat("local", "on the gpu", max_tokens=10))

        body = await wait_rows(client, len(sent))
        assert isinstance(gw.recorder, SqlLedger)
        async with gw.recorder.db.engine.connect() as conn:
            rows = [r._mapping for r in (await conn.execute(select(ledger).order_by(ledger.c.id))).all()]
            revision = await conn.run_sync(current_revision)
        assert revision == head_revision()
        local_tps = gw.backends["local"].stats.tokens_per_second.value
        local_spec = settings.model("local")
        assert local_spec is not None

    assert len(rows) == len(sent)
    expected_cost = Decimal(0)
    expected_baseline = Decimal(0)
    for row, (model, req, status) in zip(rows, sent, strict=True):
        assert row["requested_model"] == model
        assert row["status_code"] == status
        p, c = row["prompt_tokens"], row["completion_tokens"]
        if status != 200:
            assert (p, c, row["cost_usd"], row["chosen_model"]) == (0, 0, Decimal(0), None)
            assert row["error_type"] in ("AllCandidatesFailed", "UpstreamRejected", "NotFound")
            continue
        assert row["chosen_model"] == model
        assert row["total_ms"] is not None and row["total_ms"] >= 0
        assert row["ttft_ms"] is not None
        if model == "hosted-nousage":
            assert row["tokens_estimated"] is True
            assert c > 0 and p > 0
        else:
            assert row["tokens_estimated"] is False
            assert (p, c) == (prompt_tokens(req), completion_tokens(req))
        if model == "local":
            # the GPU hour at the measured throughput, never below the configured one (what routing predicts with)
            assert local_spec.gpu_hour_usd is not None and local_spec.tokens_per_second is not None
            price = local_price(local_spec.gpu_hour_usd, max(local_tps or 0.0, local_spec.tokens_per_second))
            row_cost = price.cost(p, c)
            assert row_cost > 0
        elif model == "gpt4o":
            row_cost = cost(GPT4O, p, c)
        elif row["cache_status"] == "hit":
            row_cost = Decimal(0)
        else:
            row_cost = cost(PRICES[model], p, c)
        assert row["cost_usd"] == row_cost, (model, row)
        assert row["baseline_cost_usd"] == cost(GPT4, p, c)
        expected_cost += row_cost
        expected_baseline += cost(GPT4, p, c)
    assert [r["cache_status"] for r in rows].count("hit") == 1
    assert [r["stream"] for r in rows].count(True) == 3

    totals = body["totals"]
    assert Decimal(totals["cost_usd"]) == expected_cost
    assert Decimal(totals["baseline_cost_usd"]) == expected_baseline
    assert totals["requests"] == len(sent)
    assert totals["errors"] == 2
    assert totals["cache_hits"] == 1
    assert totals["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
    assert Decimal(totals["saved_usd"]) == sum((r["saved_usd"] for r in rows), Decimal(0))
    # per-model rows add up to the totals, exactly
    assert sum(Decimal(g["cost_usd"]) for g in body["data"]) == expected_cost
    by_model = {g["group"]: g for g in body["data"]}
    assert by_model["hosted-a"]["requests"] == 6
    assert by_model[None]["requests"] == 2


async def test_money_sums_are_exact(db_url: str) -> None:
    """Amounts with 12 decimal places that floats cannot represent sum exactly in the database."""
    from gateway.accounting import open_database
    from gateway.accounting.queries import totals
    from gateway.config import LedgerSettings

    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url, batch_size=50))
    amounts = [
        Decimal("0.1"),
        Decimal("0.2"),
        Decimal("0.000000000001"),
        Decimal("12345.678901234567"),
        Decimal("0.333333333333"),
    ] * 40
    for i, amount in enumerate(amounts):
        ctx = RequestContext(request_id=f"r{i}", endpoint="chat", body={}, requested_model="m")
        ctx.cost_usd = amount
        ctx.baseline_cost_usd = amount * 2
        ctx.saved_usd = -amount
        led.record(ctx)
    assert await led.flush()
    t = await totals(db.engine)
    await led.aclose()
    assert t.cost_usd == sum(amounts, Decimal(0)) == Decimal("493852.489382716040")
    assert t.baseline_cost_usd == 2 * t.cost_usd
    assert t.saved_usd == -t.cost_usd


async def test_a_batch_retried_after_a_lost_commit_reply_is_written_once(db_url: str) -> None:
    """A commit can succeed on the server while its reply is lost with the connection; the writer then retries the
    same rows. Each row carries its own key, and a row already written is skipped (both ledgers)."""
    from gateway.accounting import open_database
    from gateway.accounting.queries import totals
    from gateway.config import LedgerSettings

    db = await open_database(db_url, require=True)
    led = SqlLedger(db, LedgerSettings(url=db_url, batch_size=50))
    for _ in range(10):
        ctx = RequestContext(request_id="same-client-id", endpoint="chat", body={}, requested_model="m")
        ctx.cost_usd = Decimal("0.5")
        led.record(ctx)
    rows = list(led._pending)
    assert await led.flush()
    led._pending.extend(rows[:4])  # the retry of a batch that was in fact committed
    assert await led.flush()
    t = await totals(db.engine)
    async with db.engine.connect() as conn:
        keys = (await conn.execute(select(ledger.c.row_key))).scalars().all()
    await led.aclose()
    # ten requests (sharing a client-chosen request id) are ten rows, each once
    assert (t.requests, t.cost_usd) == (10, Decimal("5"))
    assert len(keys) == len(set(keys)) == 10
