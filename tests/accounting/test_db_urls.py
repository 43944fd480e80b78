"""A PostgreSQL ledger URL as hosted services hand it out: libpq's options, which asyncpg names otherwise."""

from __future__ import annotations

from sqlalchemy import text

from gateway.accounting import open_database


async def test_libpq_s_url_options_work(pg_url: str) -> None:
    """``?sslmode=require`` is what hosted PostgreSQL services hand out: it was a traceback at start (asyncpg takes
    ``ssl``), as were ``connect_timeout`` and ``application_name``."""
    url = pg_url + ("&" if "?" in pg_url else "?") + "sslmode=disable&connect_timeout=5&application_name=gw-test"
    db = await open_database(url, require=True)
    try:
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("SELECT current_setting('application_name')"))).scalar() == "gw-test"
    finally:
        await db.aclose()
