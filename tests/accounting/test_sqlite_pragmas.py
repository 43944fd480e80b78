"""The SQLite ledger's connection settings: every pooled connection, not only the first."""

from __future__ import annotations

from pathlib import Path

from gateway.accounting import open_database
from gateway.accounting.db import SQLITE_CACHE_KIB


async def test_every_connection_is_wal_with_a_bounded_page_cache(tmp_path: Path) -> None:
    """Each pooled connection keeps its own page cache: at 32 MiB, a Responses API soak's RSS grew by 63 MiB
    (the ledger's writer and the response store's each filled one). All must be WAL (readers never block the
    writer) with the bounded cache."""
    db = await open_database(f"sqlite+aiosqlite:///{tmp_path}/ledger.db")
    try:
        async with db.engine.connect() as a, db.engine.connect() as b:  # two at once: two connections
            for conn in (a, b):
                assert (await conn.exec_driver_sql("PRAGMA cache_size")).scalar() == SQLITE_CACHE_KIB
                assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert -SQLITE_CACHE_KIB <= 8192  # KiB
    finally:
        await db.aclose()
