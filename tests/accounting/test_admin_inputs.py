"""The admin and spend routes' inputs: huge relative times, NUL characters, non-ASCII digits, budgets over the
bound, the drill-down rows' time zone, and the spend API's group limit; on both databases where they differ."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from typer.testing import CliRunner

from gateway.accounting import SqlLedger, open_database
from gateway.accounting import queries as q
from gateway.admin_routes import database_errors, unreachable
from gateway.auth.admission import MASTER_KEY_ID, ServiceUnavailable
from gateway.cli import app
from gateway.context import RequestContext
from tests.accounting.conftest import auth_header, chat, gateway_client, make_settings
from tests.accounting.procs import settings_dict, write_config
from tests.helpers.proxy import TcpProxy

HUGE_DAYS = "1" * 310 + "d"  # float() gives inf: int() of it raised OverflowError, not ValueError


def _error(r: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, err
    return err


def _ledger(gw: Any) -> SqlLedger:
    recorder = gw.recorder
    assert isinstance(recorder, SqlLedger)
    return recorder


def _record(led: SqlLedger, i: int, *, user: str, cost: str, days_ago: int = 0) -> None:
    ctx = RequestContext(request_id=f"seed-{i}", endpoint="chat", body={}, requested_model="hosted-a")
    ctx.started_wall = time.time() - days_ago * 86400
    ctx.chosen_model = "hosted-a"
    ctx.key_id = MASTER_KEY_ID  # the master key's own spend (/v1/spend)
    ctx.user = user
    ctx.usage.prompt_tokens = 10
    ctx.usage.completion_tokens = 1
    ctx.cost_usd = Decimal(cost)
    ctx.baseline_cost_usd = Decimal(1)
    ctx.saved_usd = Decimal(1) - Decimal(cost)
    led.record(ctx)


# -- 1. huge relative times ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [HUGE_DAYS, "1" * 320 + "h", "1e307", "-1e307", "1e300w"])
def test_parse_time_refuses_huge_values_with_a_value_error(value: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        q.parse_time(value)


async def test_huge_times_are_a_400_naming_their_parameter(master_key: str, tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    admin = auth_header(master_key)
    async with gateway_client(settings) as (client, _gw):
        cases = [
            ("/admin/spend", "start", HUGE_DAYS),
            ("/admin/spend", "end", HUGE_DAYS),
            ("/admin/spend", "end", "garbage"),
            ("/admin/dashboard/data", "start", HUGE_DAYS),
            ("/admin/dashboard/data", "end", "1e307"),
            ("/admin/quality", "end", "1" * 320 + "h"),
            ("/admin/requests", "before", "1" * 320 + "h"),
            ("/v1/spend", "end", HUGE_DAYS),
        ]
        for path, param, value in cases:
            _error(await client.get(path, params={param: value}, headers=admin), 400, param)


def test_gateway_spend_refuses_a_huge_since_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.yaml", settings_dict(make_settings("sqlite+aiosqlite:///x.db")))
    r = CliRunner().invoke(app, ["spend", "--config", str(config), "--since", HUGE_DAYS])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert r.stderr.startswith("error: not a time") and len(r.stderr.strip().splitlines()) == 1


# -- 2. NUL characters -----------------------------------------------------------------------------------


async def test_nul_in_ids_and_names_is_a_400_on_both_databases(db_url: str, master_key: str) -> None:
    settings = make_settings(db_url, auth=True)
    admin = auth_header(master_key)
    async with gateway_client(settings) as (client, _gw):
        assert (await client.post("/v1/chat/completions", json=chat("hosted-a"), headers=admin)).status_code == 200
        nul = "a\x00b"
        _error(await client.get("/admin/spend", params={"key_id": nul}, headers=admin), 400, "key_id")
        _error(await client.get("/admin/requests", params={"key_id": nul}, headers=admin), 400, "key_id")
        _error(await client.get("/admin/requests/a%00b", headers=admin), 400, "request_id")
        _error(await client.post("/admin/keys/a%00b/revoke", headers=admin), 400, "key_id")
        _error(await client.post("/admin/keys", json={"name": nul}, headers=admin), 400, "name")
        _error(await client.post("/admin/keys", json={"name": "ok", "team": nul}, headers=admin), 400, "team")
        r = await client.post("/v1/feedback", json={"request_id": nul, "score": 1}, headers=admin)
        _error(r, 400, "request_id")
        # the same routes without the NUL still answer as before
        assert (await client.get("/admin/spend", params={"key_id": "ab"}, headers=admin)).status_code == 200
        assert (await client.get("/admin/requests/ab", headers=admin)).status_code == 404
        assert (await client.post("/admin/keys", json={"name": "ab"}, headers=admin)).status_code == 201


async def test_only_an_unreachable_database_is_a_503(pg_url: str) -> None:
    """A statement PostgreSQL refuses (here a NUL in a parameter, SQLSTATE 22021) propagates (a logged 500);
    a connection failure is the 503."""
    db = await open_database(pg_url, require=True)
    try:
        with pytest.raises(DBAPIError) as caught:
            with database_errors():
                async with db.engine.connect() as conn:
                    await conn.execute(text("SELECT :v"), {"v": "a\x00b"})
        assert not unreachable(caught.value)
    finally:
        await db.aclose()
    assert unreachable(ConnectionRefusedError(111, "refused"))
    assert unreachable(OperationalError("SELECT 1", {}, Exception("database is locked")))
    with pytest.raises(ServiceUnavailable):
        with database_errors("key"):
            raise ConnectionRefusedError(111, "refused")


async def test_a_database_outage_is_still_a_503(pg_url: str, master_key: str) -> None:
    """A connection cut under the admin routes (PostgreSQL behind a relay) is the 503, not a 500."""
    await (await open_database(pg_url, require=True)).aclose()  # the schema
    proxy = TcpProxy(5432)
    proxy.start()
    try:
        settings = make_settings(pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), auth=True)
        admin = auth_header(master_key)
        async with gateway_client(settings) as (client, _gw):
            assert (await client.get("/admin/requests", headers=admin)).status_code == 200
            proxy.stop()  # the database becomes unreachable, open connections drop
            for path in ("/admin/requests", "/admin/spend", "/admin/keys"):
                err = _error(await client.get(path, headers=admin), 503, None)
                assert err["type"] == "service_unavailable" and "unreachable" in err["message"]
            proxy.start()
    finally:
        proxy.close()


# -- 3. ASCII digits only --------------------------------------------------------------------------------


async def test_limit_takes_ascii_digits_only(master_key: str, tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    admin = auth_header(master_key)
    async with gateway_client(settings) as (client, _gw):
        for bad in ["\u00b2", "\u0665", "", "0", "1001", "-1", "+5", " 5", "1" * 5000]:
            _error(await client.get("/admin/requests", params={"limit": bad}, headers=admin), 400, "limit")
            _error(await client.get("/admin/spend", params={"limit": bad}, headers=admin), 400, "limit")
        assert (await client.get("/admin/requests", params={"limit": "5"}, headers=admin)).status_code == 200


# -- 4. drill-down times are UTC with their zone --------------------------------------------------------


async def test_drill_down_times_carry_their_time_zone(db_url: str, master_key: str) -> None:
    settings = make_settings(db_url, auth=True)
    admin = auth_header(master_key)
    async with gateway_client(settings) as (client, _gw):
        r = await client.post("/v1/chat/completions", json=chat("hosted-a"), headers=admin)
        assert r.status_code == 200
        rows = (await client.get("/admin/requests", headers=admin)).json()["data"]
        assert len(rows) == 1 and rows[0]["ts"].endswith("+00:00"), rows[0]["ts"]
        one = (await client.get(f"/admin/requests/{rows[0]['request_id']}", headers=admin)).json()["data"]
        assert one[0]["ts"] == rows[0]["ts"]


# -- 5. the CLI's budget bound ---------------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["20000000", "1e30", "9000000.000000000001", "-1", "NaN", "lots"])
def test_keys_create_refuses_a_budget_out_of_bounds(budget: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.yaml", settings_dict(make_settings("sqlite+aiosqlite:///x.db")))
    r = CliRunner().invoke(app, ["keys", "create", "--config", str(config), "--name", "n", "--budget-usd", budget])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == f"error: --budget-usd must be a decimal number from 0 to {q.MAX_BUDGET_USD}"


def test_keys_create_takes_the_largest_budget(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    config = write_config(tmp_path / "gateway.yaml", settings_dict(settings))
    r = CliRunner().invoke(app, ["keys", "create", "--config", str(config), "--name", "n", "--budget-usd", "9000000"])
    assert r.exit_code == 0, r.output
    assert "budget=$9,000,000.000000" in r.stderr


async def test_the_http_budget_bound_is_the_same(master_key: str, tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    admin = auth_header(master_key)
    async with gateway_client(settings) as (client, _gw):
        r = await client.post("/admin/keys", json={"name": "n", "budget_usd": "9000000.01"}, headers=admin)
        assert str(q.MAX_BUDGET_USD) in _error(r, 400, "budget_usd")["message"]
        r = await client.post("/admin/keys", json={"name": "n", "budget_usd": 9_000_000}, headers=admin)
        assert r.status_code == 201 and r.json()["budget_usd"] == "9000000.000000000000"


# -- 6. the spend API's group limit ----------------------------------------------------------------------


async def test_spend_groups_are_limited_most_expensive_first(db_url: str, master_key: str) -> None:
    settings = make_settings(db_url, auth=True)
    admin = auth_header(master_key)
    async with gateway_client(settings) as (client, gw):
        led = _ledger(gw)
        costs = {"u1": "0.5", "u2": "0.25", "u3": "2", "u4": "1"}
        for i, (user, cost) in enumerate(costs.items()):
            _record(led, i, user=user, cost=cost, days_ago=i)
        await led.flush()

        def get(params: dict[str, str]) -> Any:
            return client.get("/admin/spend", params={"group_by": "user", **params}, headers=admin)

        body = (await get({"limit": "2"})).json()
        assert [g["group"] for g in body["data"]] == ["u3", "u4"]
        assert body["limit"] == 2 and body["truncated"] is True
        assert body["totals"]["requests"] == 4  # the totals cover every group
        body = (await get({})).json()
        assert [g["group"] for g in body["data"]] == ["u3", "u4", "u1", "u2"]
        assert body["limit"] == 100 and body["truncated"] is False
        body = (await get({"limit": "4"})).json()
        assert len(body["data"]) == 4 and body["truncated"] is False
        _error(await get({"limit": "1001"}), 400, "limit")
        # days: the newest ones, listed by date
        body = (await client.get("/admin/spend", params={"group_by": "day", "limit": "2"}, headers=admin)).json()
        today = time.time()
        assert [g["group"] for g in body["data"]] == [
            time.strftime("%Y-%m-%d", time.gmtime(today - 86400)),
            time.strftime("%Y-%m-%d", time.gmtime(today)),
        ]
        assert body["truncated"] is True
        # a key's own spend takes the same limit
        own = (await client.get("/v1/spend", params={"group_by": "user", "limit": "1"}, headers=admin)).json()
        assert [g["group"] for g in own["data"]] == ["u3"] and own["truncated"] is True
        _error(await client.get("/v1/spend", params={"limit": "\u00b2"}, headers=admin), 400, "limit")
