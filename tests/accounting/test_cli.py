"""``gateway keys create|list|revoke`` and ``gateway spend`` against both databases."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import redis
from typer.testing import CliRunner

from gateway.accounting import SqlLedger, open_database
from gateway.cli import app
from gateway.config import LedgerSettings
from gateway.context import RequestContext
from tests.accounting.conftest import REDIS_URL, make_settings
from tests.accounting.procs import settings_dict, write_config


async def _seed(url: str, key_id: str) -> None:
    led = SqlLedger(await open_database(url, require=True), LedgerSettings(url=url))
    for i, (model, cost) in enumerate([("hosted-a", "0.25"), ("hosted-a", "0.5"), ("gpt4o", "1.125")]):
        ctx = RequestContext(request_id=f"r{i}", endpoint="chat", body={}, requested_model=model)
        ctx.chosen_model = model
        ctx.key_id = key_id
        ctx.usage.prompt_tokens = 100
        ctx.usage.completion_tokens = 10
        ctx.cost_usd = Decimal(cost)
        ctx.baseline_cost_usd = Decimal(2)
        ctx.saved_usd = Decimal(2) - Decimal(cost)
        led.record(ctx)
    await led.aclose()


def test_keys_and_spend_commands(db_url: str, redis_prefix: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, auth=True, redis_prefix=redis_prefix)
    config = str(write_config(tmp_path / "gateway.yaml", settings_dict(settings)))
    runner = CliRunner()

    r = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--config",
            config,
            "--name",
            "ci-bot",
            "--team",
            "infra",
            "--budget-usd",
            "12.5",
            "--rpm",
            "60",
            "--tpm",
            "10000",
        ],
    )
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip().splitlines()[0]
    assert secret.startswith("sk-gw-")
    key_id = r.stderr.split()[1]
    assert key_id.startswith("key_") and "not shown again" in r.stderr

    r = runner.invoke(app, ["keys", "list", "--config", config])
    assert r.exit_code == 0, r.output
    assert "ci-bot" in r.stdout and "infra" in r.stdout and "$12.500000" in r.stdout and "active" in r.stdout
    assert secret not in r.stdout and secret[:10] in r.stdout

    asyncio.run(_seed(db_url, key_id))
    r = runner.invoke(app, ["spend", "--config", config, "--group-by", "model", "--since", "1h"])
    assert r.exit_code == 0, r.output
    assert "hosted-a" in r.stdout and "$0.750000" in r.stdout and "$1.875000" in r.stdout
    r = runner.invoke(app, ["spend", "--config", config, "--group-by", "key"])
    assert f"{key_id} (ci-bot)" in r.stdout

    r = runner.invoke(app, ["keys", "revoke", key_id, "--config", config])
    assert r.exit_code == 0 and "revoked" in r.stdout
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert client.sismember(f"{redis_prefix}revoked", key_id)
    finally:
        client.close()
    r = runner.invoke(app, ["keys", "list", "--config", config])
    assert "ci-bot" not in r.stdout
    r = runner.invoke(app, ["keys", "list", "--config", config, "--all"])
    assert "revoked" in r.stdout

    assert runner.invoke(app, ["keys", "revoke", "key_missing", "--config", config]).exit_code == 1
    assert runner.invoke(app, ["spend", "--config", config, "--group-by", "colour"]).exit_code == 2
    assert runner.invoke(app, ["spend", "--config", config, "--since", "yesterday-ish"]).exit_code == 2


def test_a_ledger_from_a_newer_gateway_is_one_line(tmp_path: Path) -> None:
    """``gateway spend`` against a ledger a newer gateway migrated: one line and exit 2 (it was a traceback)."""
    from sqlalchemy import text

    url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"

    async def newer() -> None:
        db = await open_database(url, require=True)
        async with db.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        await db.aclose()

    asyncio.run(newer())
    config = str(write_config(tmp_path / "gateway.yaml", settings_dict(make_settings(url))))
    r = CliRunner().invoke(app, ["spend", "--config", config])
    assert r.exit_code == 2, r.output
    assert "revision 9999" in r.output and "Traceback" not in r.output


def test_gateway_migrate_brings_the_ledger_to_this_version(tmp_path: Path) -> None:
    """``gateway migrate``: the start-up's migration on its own (before a rollout on a large ledger)."""
    from gateway.accounting.migrate import head_revision

    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    config = str(write_config(tmp_path / "gateway.yaml", settings_dict(make_settings(url))))
    r = CliRunner().invoke(app, ["migrate", "--config", config])
    assert r.exit_code == 0, r.output
    assert f"ledger schema at revision {head_revision()}" in r.output
    assert (tmp_path / "ledger.db").exists()
