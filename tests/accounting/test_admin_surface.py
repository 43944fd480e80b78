"""The admin surface against a careless operator and a hostile client (an audit's findings, each reproduced first):

- a key's ``team`` was cut to 128 characters: two tenants whose names share their first 128 became one team, and
  shared cached answers, feedback rights and spend; a team that was not a string became "no team" with a 201;
- a budget finer than the stored precision (12 places) was stored rounded, 1e-13 as a budget of $0;
- ``gateway keys create`` took what the admin API refuses (an rpm past PostgreSQL's INTEGER, a blank name) and
  crashed with a traceback on an rpm past SQLite's; ``keys create``/``revoke`` printed names' escape sequences
  raw to the operator's terminal;
- wrong master keys were neither logged nor limited (~1,600 tries a second), and admin actions left no trace;
- a request id holding a ``/`` (clients choose it) could not be read back through ``/admin/requests/{id}``;
- the dashboard's pages had no security headers (framed by any site: clickjacking on a page holding the master key).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.auth.admin_guard import MAX_FAILURES
from gateway.cli import app
from gateway.context import RequestContext
from tests.accounting.conftest import auth_header, chat, gateway_client, make_settings
from tests.accounting.procs import settings_dict, write_config
from tests.accounting.test_admin_inputs import _error


async def test_a_key_s_fields_are_refused_rather_than_cut(master_key: str, tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    admin = auth_header(master_key)
    long_team = "t" * 128
    async with gateway_client(settings) as (client, _gw):
        create = client.post
        _error(await create("/admin/keys", json={"name": "a", "team": long_team + "-A"}, headers=admin), 400, "team")
        _error(await create("/admin/keys", json={"name": "a", "team": 5}, headers=admin), 400, "team")
        _error(await create("/admin/keys", json={"name": "a", "team": ["x"]}, headers=admin), 400, "team")
        _error(await create("/admin/keys", json={"name": "n" * 129}, headers=admin), 400, "name")
        _error(await create("/admin/keys", json={"name": "evil\x1b]0;pwned\x07"}, headers=admin), 400, "name")
        _error(await create("/admin/keys", json={"name": "   "}, headers=admin), 400, "name")
        _error(await create("/admin/keys", json={"name": 7}, headers=admin), 400, "name")
        _error(await create("/admin/keys", json={"name": "a", "rpm": 2**31}, headers=admin), 400, "rpm")
        for budget in ("0.0000000000001", "0.1234567890123456789"):
            err = _error(
                await create("/admin/keys", json={"name": "a", "budget_usd": budget}, headers=admin), 400, "budget_usd"
            )
            assert "12 decimal places" in err["message"]
        r = await create(
            "/admin/keys", json={"name": " a ", "team": long_team, "budget_usd": "0.000000000001"}, headers=admin
        )
        assert r.status_code == 201, r.text
        assert (r.json()["name"], r.json()["team"], r.json()["budget_usd"]) == ("a", long_team, "0.000000000001")


def test_keys_create_refuses_what_the_admin_api_refuses_in_one_line(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "gateway.yaml", settings_dict(make_settings(f"sqlite+aiosqlite:///{tmp_path}/l.db"))
    )
    for args, param in (
        (["--name", "n", "--rpm", "99999999999999999999"], "rpm"),
        (["--name", "n", "--tpm", str(2**31)], "tpm"),
        (["--name", "   "], "name"),
        (["--name", "n", "--team", "t" * 129], "team"),
    ):
        r = CliRunner().invoke(app, ["keys", "create", "--config", str(config), *args])
        assert r.exit_code == 2, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit)
        assert r.stderr.startswith(f"error: --{param}") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "l.db").exists()  # refused before the database was touched


async def test_names_stored_before_the_check_reach_the_terminal_escaped(master_key: str, tmp_path: Path) -> None:
    """A key made by an earlier version may hold an escape sequence: ``keys revoke`` shows it escaped."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    settings = make_settings(url, auth=True)
    config = write_config(tmp_path / "gateway.yaml", settings_dict(settings))
    async with gateway_client(settings) as (client, gw):
        r = await client.post("/admin/keys", json={"name": "plain"}, headers=auth_header(master_key))
        key_id = r.json()["id"]
        from sqlalchemy import text

        async with gw.admission.store.db.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(text("UPDATE gw_api_keys SET name = :n WHERE id = :i"), {"n": "e\x1b[2Jx", "i": key_id})
    r = await asyncio.to_thread(CliRunner().invoke, app, ["keys", "revoke", "--config", str(config), key_id])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stdout and "'e\\x1b[2Jx'" in r.stdout


async def test_wrong_master_keys_are_logged_then_refused_per_address(
    master_key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong master keys are logged (the first of a minute, then the lock) and, past 20 a minute from an address,
    answered 429. The right key always passes (behind a proxy every client shares one address: a lock on the
    address let anyone lock the admins out), and neither a tenant's virtual key nor a /ready probe counts."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    caplog.set_level(logging.INFO, logger="gateway.admin")
    async with gateway_client(settings) as (client, _gw):
        virtual = (await client.post("/admin/keys", json={"name": "t"}, headers=auth_header(master_key))).json()["key"]
        for _ in range(MAX_FAILURES + 5):
            assert (await client.get("/ready", headers=auth_header("wrong-" * 4))).status_code in (200, 503)
            assert (await client.get("/admin/keys", headers=auth_header(virtual))).status_code == 403
        for _ in range(MAX_FAILURES):
            assert (await client.get("/admin/keys", headers=auth_header("wrong-" * 4))).status_code == 401
        locked = await client.get("/admin/keys", headers=auth_header("wrong-" * 4))
        admin = await client.get("/admin/keys", headers=auth_header(master_key))  # the right key, same address
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0, locked.text
    assert locked.json()["error"]["code"] == "admin_locked"
    assert admin.status_code == 200
    warnings = [m for m in caplog.messages if "wrong master key" in m]
    assert len(warnings) == 2, warnings  # the window's first failure, then the lock: not one line per try
    assert "127.0.0.1" in warnings[0] and "/admin/keys" in warnings[0]
    assert "wrong-" not in caplog.text and virtual not in caplog.text  # never a key


async def test_admin_actions_leave_a_trace(master_key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    caplog.set_level(logging.INFO, logger="gateway.admin")
    admin = auth_header(master_key)
    async with gateway_client(settings) as (client, _gw):
        r = await client.post("/admin/keys", json={"name": "n", "team": "acme"}, headers=admin)
        secret, key_id = r.json()["key"], r.json()["id"]
        assert (await client.post(f"/admin/keys/{key_id}/revoke", headers=admin)).status_code == 200
    assert any(f"key {key_id} created (team acme)" in m for m in caplog.messages), caplog.messages
    assert any(f"key {key_id} revoked" in m for m in caplog.messages), caplog.messages
    assert secret not in caplog.text


async def test_a_request_id_with_a_slash_can_be_read_back(master_key: str, tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    admin = auth_header(master_key)
    async with gateway_client(settings) as (client, _gw):
        headers = {**admin, "x-request-id": "team/a/req-1"}
        assert (await client.post("/v1/chat/completions", json=chat("hosted-a"), headers=headers)).status_code == 200
        r = await client.get("/admin/requests/team%2Fa%2Freq-1", headers=admin)
    assert r.status_code == 200, r.text
    assert [row["request_id"] for row in r.json()["data"]] == ["team/a/req-1"]


async def test_the_dashboard_cannot_be_framed_by_another_site(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    async with gateway_client(settings) as (client, _gw):
        pages = [await client.get(path) for path in ("/dashboard", "/dashboard/static/dashboard.js")]
    for r in pages:
        assert r.status_code == 200
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"


async def test_paging_the_drill_down_returns_every_row_once(master_key: str, tmp_path: Path) -> None:
    """Rows in the same millisecond (common under concurrent traffic): paging with ``before`` = the last row's time
    skipped the others of that millisecond (9% of 700 rows). ``last_id`` / ``before_id`` page by row."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    admin = auth_header(master_key)
    async with gateway_client(settings) as (client, gw):
        ledger = gw.recorder
        for i in range(30):
            ctx = RequestContext(request_id=f"same-{i}", endpoint="chat", body={}, requested_model="hosted-a")
            ctx.started_wall = 1_800_000_000.123  # one millisecond for all
            ledger.record(ctx)  # type: ignore[union-attr]
        seen: list[str] = []
        cursor: dict[str, Any] = {}
        while True:
            page = (await client.get("/admin/requests", params={"limit": 7, **cursor}, headers=admin)).json()
            seen += [row["request_id"] for row in page["data"]]
            if not page["has_more"]:
                break
            cursor = {"before_id": page["last_id"]}
    assert sorted(seen) == sorted(f"same-{i}" for i in range(30))


async def test_a_spend_answer_adds_up_to_itself_while_others_write(
    master_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The groups and the totals were two statements: rows another replica committed between them made one answer
    disagree with itself (groups 500 requests, totals 532). Listed whole, the groups' sums are the totals."""
    from gateway.accounting import queries

    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    admin = auth_header(master_key)
    async with gateway_client(settings) as (client, gw):
        assert (await client.post("/v1/chat/completions", json=chat("hosted-a"), headers=admin)).status_code == 200
        real = queries.spend_page

        async def then_another_replica_writes(*args: Any, **kwargs: Any) -> Any:
            page = await real(*args, **kwargs)
            ctx = RequestContext(request_id="meanwhile", endpoint="chat", body={}, requested_model="hosted-a")
            ctx.chosen_model = "hosted-a"
            gw.recorder.record(ctx)  # type: ignore[union-attr]
            assert await gw.recorder.flush()  # type: ignore[union-attr]
            return page

        monkeypatch.setattr(queries, "spend_page", then_another_replica_writes)
        body = (await client.get("/admin/spend", params={"group_by": "model"}, headers=admin)).json()
    assert not body["truncated"]
    assert sum(g["requests"] for g in body["data"]) == body["totals"]["requests"]
