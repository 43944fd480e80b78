"""A PostgreSQL ledger URL as hosted services hand it out: libpq's options, which asyncpg names otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.accounting import open_database
from gateway.accounting.db import LedgerUnusable
from tests.helpers.ports import free_port


async def test_libpq_s_url_options_work(pg_url: str) -> None:
    """``?sslmode=require`` is what hosted PostgreSQL services hand out: it was a traceback at start (asyncpg takes
    ``ssl``), as were ``connect_timeout`` and ``application_name``."""
    url = pg_url + ("&" if "?" in pg_url else "?") + "sslmode=disable&connect_timeout=5&application_name=gw-test"
    # and options that worked before the check: SQLAlchemy's (PgBouncer's 0) and asyncpg's; libpq's 0, "no limit"
    more = "prepared_statement_cache_size=0&command_timeout=30&connect_timeout=0"
    db = await open_database(pg_url + ("&" if "?" in pg_url else "?") + more, require=True)
    await db.aclose()
    db = await open_database(url, require=True)
    try:
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("SELECT current_setting('application_name')"))).scalar() == "gw-test"
    finally:
        await db.aclose()


async def test_a_database_that_can_never_hold_the_ledger_stops_the_start(tmp_path: Path, pg_url: str) -> None:
    """A ledger file that is not a database, or read-only, or a PostgreSQL database that does not exist: the gateway
    started with a warning that rows were "kept until it answers", served, and recorded nothing (spend, budgets,
    savings) while /ready said 200. An outage still starts; these do not."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 500)
    readonly = tmp_path / "ro.db"
    await (await open_database(f"sqlite+aiosqlite:///{readonly}", require=True)).aclose()
    readonly.chmod(0o444)
    missing = pg_url.rsplit("/", 1)[0] + "/gw_no_such_database"
    cases = {
        f"sqlite+aiosqlite:///{junk}": "file is not a database",
        f"sqlite+aiosqlite:///{tmp_path / 'dir.db'}": "unable to open database file",
        missing: 'database "gw_no_such_database" does not exist',
    }
    (tmp_path / "dir.db").mkdir()
    if os.geteuid() != 0:  # root writes a read-only file anyway
        cases[f"sqlite+aiosqlite:///{readonly}"] = "readonly database"
    for url, why in cases.items():
        with pytest.raises(LedgerUnusable, match=why):
            await open_database(url)
    outage = await open_database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test", connect_timeout_s=2)
    await outage.aclose()  # nothing listens: an outage, the start goes on


async def test_a_failed_statement_s_error_holds_no_row_values(tmp_path: Path) -> None:
    """The ledger writer logs a failed batch's error: SQLAlchemy's message carried the row's values, a client's
    ``user`` among them."""
    from sqlalchemy.exc import OperationalError

    db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}", require=True)
    try:
        with pytest.raises(OperationalError) as err:
            async with db.engine.begin() as conn:
                await conn.execute(text("INSERT INTO no_such_table VALUES (:u)"), {"u": "alice@example.com"})
    finally:
        await db.aclose()
    assert "alice@example.com" not in str(err.value)
