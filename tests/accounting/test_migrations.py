"""Alembic migrations: a fresh database, and a ledger written by the hand-written runner (schema version 2)
upgraded in place, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.accounting import open_database
from gateway.accounting.ledger import row_from_context
from gateway.accounting.migrate import (
    HEAD,
    SchemaTooNew,
    _upgrade,
    alembic_config,
    current_revision,
    head_revision,
    migrate,
)
from gateway.accounting.queries import totals
from gateway.accounting.schema import ledger
from gateway.context import RequestContext
from tests.accounting import legacy_schema_v2 as legacy
from tests.accounting.conftest import database_url


def _row(i: int) -> dict[str, object]:
    ctx = RequestContext(request_id=f"old-{i}", endpoint="chat", body={}, requested_model="m")
    ctx.chosen_model = f"model-{i % 3}"
    ctx.key_id = f"key-{i % 2}"
    ctx.cost_usd = Decimal("0.000000000001") * (i + 1) + Decimal("0.1")
    ctx.baseline_cost_usd = ctx.cost_usd * 3
    ctx.saved_usd = ctx.baseline_cost_usd - ctx.cost_usd
    ctx.started_wall = 1_700_000_000 + i * 997.0
    ctx.status_code = 500 if i % 7 == 0 else 200
    return row_from_context(ctx)


async def _write_legacy_ledger(url: str, n: int) -> list[dict[str, object]]:
    """A ledger as the gateway wrote it before Alembic: the old runner's schema, rows via its insert."""
    engine = create_async_engine(url)
    rows = [_row(i) for i in range(n)]
    async with engine.begin() as conn:
        assert await legacy.migrate(conn) == 2
        await conn.execute(legacy.ledger.insert(), rows)
    await engine.dispose()
    return rows


def test_the_revisions_form_one_chain() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert scripts.get_heads() == [head_revision()]
    assert [r.revision for r in scripts.walk_revisions()][-1] == "0001"
    assert head_revision() == HEAD  # the constant that spares a ledger at head from importing Alembic


_OPEN = """
import asyncio, sys
from gateway.accounting import open_database

async def main() -> None:
    db = await open_database(sys.argv[1], require=True)
    await db.aclose()
    print(sorted(m for m in sys.modules if m.split(".")[0] in ("alembic", "mako")))

asyncio.run(main())
"""


def _schema(connection: Connection) -> dict[str, object]:
    """Every table's columns (type, nullability), primary key and indexes, as the database reports them."""
    insp = inspect(connection)
    out: dict[str, object] = {}
    for name in sorted(insp.get_table_names()):
        columns = [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(name)]
        indexes = sorted(
            (
                i["name"] or "",
                tuple(i["column_names"]),
                bool(i["unique"]),
                str(
                    sorted((k, str(v).replace('"', "")) for k, v in i.get("dialect_options", {}).items())
                ),  # where clauses,
            )
            for i in insp.get_indexes(name)
        )
        out[name] = (columns, insp.get_pk_constraint(name)["constrained_columns"], indexes)
    if connection.dialect.name == "postgresql":  # storage parameters (fillfactor)
        query = "SELECT relname, reloptions FROM pg_class WHERE relkind = 'r' AND relname LIKE 'gw_%'"
        out["reloptions"] = sorted((r, tuple(o or ())) for r, o in connection.execute(text(query)))
    return out


async def _build(url: str, way: str) -> dict[str, object]:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        if way == "alembic":  # every revision from the first, as an upgrade runs them
            assert await conn.run_sync(_upgrade, "head") == HEAD
        else:  # what the gateway does on an empty database
            assert await migrate(conn) == HEAD
    async with engine.connect() as conn:
        assert await conn.run_sync(current_revision) == HEAD
        built = await conn.run_sync(_schema)
    await engine.dispose()
    return built


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_new_database_gets_the_schema_the_migrations_build(kind: str, tmp_path: Path) -> None:
    schemas = []
    for way in ("declared", "alembic"):
        (tmp_path / way).mkdir()
        with database_url(kind, tmp_path / way) as url:
            schemas.append(asyncio.run(_build(url, way)))
    assert schemas[0] == schemas[1]


async def test_a_new_database_and_one_at_head_open_without_alembic(db_url: str) -> None:
    argv = [sys.executable, "-c", _OPEN, db_url]
    for _ in ("a new database", "the same database, now at head"):
        out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]"  # the server process holds neither Alembic nor Mako


async def test_a_fresh_database_is_at_head(db_url: str) -> None:
    db = await open_database(db_url, require=True)
    async with db.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == head_revision()
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    await db.aclose()
    assert {"gw_ledger", "gw_api_keys", "alembic_version"} <= tables
    assert "gw_schema_version" not in tables


async def test_the_hour_and_day_rollups_keep_room_for_updates(pg_url: str) -> None:
    # Revision 0008: half of each page free, so the writer's updates of the current hour and day stay on their page.
    db = await open_database(pg_url, require=True)
    async with db.engine.connect() as conn:
        options = dict(
            (
                await conn.execute(text("SELECT relname, reloptions FROM pg_class WHERE relname LIKE 'gw_rollup_%'"))
            ).all()
        )
    await db.aclose()
    assert options["gw_rollup_hour"] == options["gw_rollup_day"] == ["fillfactor=50"]
    assert options["gw_rollup_minute"] is None


async def test_the_cascade_report_reads_its_partial_index(db_url: str) -> None:
    # Revision 0007: the cascade rows by time, so the dashboard's cascade report does not read every raw row.
    db = await open_database(db_url, require=True)
    async with db.engine.connect() as conn:
        indexes = await conn.run_sync(lambda c: {i["name"] for i in inspect(c).get_indexes("gw_ledger")})
        if db.engine.dialect.name == "sqlite":
            plan = (
                await conn.execute(
                    text(
                        "EXPLAIN QUERY PLAN SELECT route, count(*) FROM gw_ledger "
                        "WHERE cascade IS NOT NULL AND ts_ms >= 1 AND ts_ms < 2 GROUP BY route"
                    )
                )
            ).all()
            assert "ix_gw_ledger_cascade_ts" in " ".join(str(r[-1]) for r in plan)
    await db.aclose()
    assert "ix_gw_ledger_cascade_ts" in indexes


async def test_a_version_2_ledger_is_upgraded_in_place(db_url: str) -> None:
    rows = await _write_legacy_ledger(db_url, 50)
    db = await open_database(db_url, require=True)
    async with db.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == head_revision()
        count = (await conn.execute(select(func.count()).select_from(ledger))).scalar()
        keys = set((await conn.execute(select(ledger.c.row_key))).scalars())
    t = await totals(db.engine)
    await db.aclose()
    assert count == 50
    assert keys == {r["row_key"] for r in rows}
    assert t.requests == 50
    assert t.cost_usd == sum((Decimal(str(r["cost_usd"])) for r in rows), Decimal(0))
    assert t.errors == sum(1 for i in range(50) if i % 7 == 0)
    # a second start finds nothing to do
    db = await open_database(db_url, require=True)
    assert (await totals(db.engine)).requests == 50
    await db.aclose()


async def test_a_version_1_ledger_gets_its_row_keys(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'v1.db'}"
    await _write_legacy_ledger(url, 5)
    engine = create_async_engine(url)
    async with engine.begin() as conn:  # back to what version 1 created
        await conn.execute(text("DROP INDEX ux_gw_ledger_row_key"))
        await conn.execute(text("ALTER TABLE gw_ledger DROP COLUMN row_key"))
        await conn.execute(text("DELETE FROM gw_schema_version WHERE version > 1"))
    await engine.dispose()
    db = await open_database(url, require=True)
    async with db.engine.connect() as conn:
        columns = await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns("gw_ledger")})
        indexes = await conn.run_sync(lambda c: {i["name"]: i["unique"] for i in inspect(c).get_indexes("gw_ledger")})
        assert await conn.run_sync(current_revision) == head_revision()
    await db.aclose()
    assert "row_key" in columns and indexes["ux_gw_ledger_row_key"]


async def test_a_database_from_a_newer_gateway_is_refused(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    db = await open_database(url, require=True)
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    await db.aclose()
    with pytest.raises(SchemaTooNew):
        await open_database(url, require=True)
