"""The SQLite writer's thread runs the ledger's statements at idle CPU priority, goes back to normal when a
statement starves and after each transaction, and stays normal where the process may not switch back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from gateway.accounting import SqlLedger, open_database
from gateway.accounting.priority import THREAD_ID, can_switch
from gateway.config import LedgerSettings
from tests.accounting.rollup_support import random_rows

pytestmark = pytest.mark.skipif(not can_switch(), reason="needs Linux's SCHED_IDLE and the right to switch back")


def _policies(engine: Any) -> list[tuple[str, int]]:
    """Each statement's first words and the scheduling policy of the thread about to run it."""
    seen: list[tuple[str, int]] = []

    def before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        tid = conn.info.get(THREAD_ID)
        if tid is not None:
            seen.append((" ".join(statement.split()[:3]), os.sched_getscheduler(tid)))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    return seen


async def test_the_writer_statements_run_at_idle_priority_and_other_work_at_normal(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    db = await open_database(url, require=True)
    led = SqlLedger(db, LedgerSettings(url=url, flush_interval_seconds=3600))
    seen = _policies(db.engine)
    for row in random_rows(1, 250, span_ms=600_000, models=("model-0", "model-1")):
        led.append(row)
    assert await led.flush()
    writes = [policy for stmt, policy in seen if stmt.startswith("INSERT INTO")]
    assert len(writes) >= 1 + 6  # the raw rows, then each grain's two rollup upserts
    assert set(writes) == {os.SCHED_IDLE}
    assert db.writer_priority.raised == 0
    seen.clear()
    async with db.engine.connect() as conn:  # the pool lends the same connection to a dashboard query next
        assert (await conn.execute(text("SELECT count(*) FROM gw_ledger"))).scalar() == 250
    assert seen and {policy for _, policy in seen} == {os.SCHED_OTHER}
    await led.aclose()


async def test_a_starved_statement_is_finished_at_normal_priority_and_so_are_the_next(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    db = await open_database(url, require=True)
    led = SqlLedger(db, LedgerSettings(url=url, flush_interval_seconds=3600))
    priority = db.writer_priority
    priority.STARVED_SECONDS = 0.0  # every statement at idle priority counts as starved at the loop's next turn
    priority.NORMAL_STATEMENTS = 3
    seen = _policies(db.engine)
    for row in random_rows(2, 250, span_ms=600_000, models=("model-0",)):
        led.append(row)
    assert await led.flush()
    writes = [policy for stmt, policy in seen if stmt.startswith("INSERT INTO")]
    assert len(writes) >= 7  # the raw rows, six rollup upserts, then the commit (not seen here)
    # Raised, then three statements at normal priority without a wait, then idle again (and raised again).
    assert writes[1:4] == [os.SCHED_OTHER] * 3
    assert priority.raised >= 2
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM gw_ledger"))).scalar() == 250
    await led.aclose()


async def test_while_rows_pile_up_the_writer_runs_at_normal_priority(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    db = await open_database(url, require=True)
    settings = LedgerSettings(url=url, flush_interval_seconds=3600, batch_size=50, max_batch_rows=100)
    led = SqlLedger(db, settings)
    seen = _policies(db.engine)
    for row in random_rows(3, 300, span_ms=600_000, models=("model-0",)):
        led.append(row)
    assert await led.flush()  # three transactions of 100 rows: 200, 100, then 0 rows still waiting behind them
    raw = [policy for stmt, policy in seen if stmt.startswith("INSERT INTO gw_ledger")]
    assert raw == [os.SCHED_OTHER, os.SCHED_OTHER, os.SCHED_IDLE]  # behind while >= 2 x batch_size rows wait
    await led.aclose()


def test_without_the_right_to_switch_back_the_writer_stays_at_normal_priority(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and util-linux's setpriv to run a process without CAP_SYS_NICE")
    script = (
        "import asyncio, logging\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from gateway.accounting import open_database\n"
        "async def main():\n"
        f"    db = await open_database('sqlite+aiosqlite:///{tmp_path}/ledger.db', require=True)\n"
        "    print('enabled', db.writer_priority.enabled)\n"
        "    await db.aclose()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [setpriv, "--bounding-set", "-sys_nice", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "enabled False" in out.stdout
    assert "raising a thread back from SCHED_IDLE needs CAP_SYS_NICE" in out.stderr
