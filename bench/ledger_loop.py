"""What the ledger's writer costs the event loop: its longest callback and its CPU per row.

    .venv/bin/python bench/ledger_loop.py [--rows 1000] [--rounds 5] [--execute-rows 25] [--db URL]

A request that arrives while the event loop runs a callback waits for it, so the longest callback the
ledger's background writer runs bounds what it adds to a request's latency (the tail of the sequential
added latency in ``bench/run_side_by_side.sh``). This writes ``--rows`` requests' rows per round through
:class:`gateway.accounting.SqlLedger` (SQLite in a temporary file unless ``--db`` says otherwise) on an
asyncio loop whose callbacks are timed in the loop thread's own CPU time (robust to other processes on a
shared machine, unlike wall time), and prints per round the longest callback and the loop's CPU per row.
``--execute-rows`` sets :data:`gateway.accounting.ledger_module.EXECUTE_ROWS` (rows per statement within a batch's
transaction); ``--execute-rows 200`` is the old behaviour, one statement per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.events
import statistics
import tempfile
import time
from decimal import Decimal
from typing import Any

import gateway.accounting.ledger as ledger_module
from gateway.accounting import SqlLedger, open_database
from gateway.config import LedgerSettings
from gateway.context import RequestContext

CALLBACKS: list[float] = []
_run = asyncio.events.Handle._run


def _timed(self: Any) -> None:
    start = time.thread_time()
    _run(self)
    CALLBACKS.append(time.thread_time() - start)


def request(i: int) -> RequestContext:
    """A finished request's context, as the pipeline leaves it."""
    ctx = RequestContext(request_id=f"req-{i}", endpoint="chat", body={}, requested_model="fake-gpt")
    ctx.chosen_model, ctx.policy, ctx.attempts = "fake-gpt", "explicit", ["fake-gpt"]
    ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 20, 9
    ctx.cost_usd, ctx.baseline_cost_usd, ctx.saved_usd = Decimal("0.000123"), Decimal("0.00114"), Decimal("0.001017")
    ctx.ttft_s = ctx.total_s = 0.001
    return ctx


async def main(rows: int, rounds: int, url: str | None) -> None:
    url = url or f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/ledger.db"
    writer = SqlLedger(await open_database(url), LedgerSettings(url=url, flush_interval_seconds=3600))
    writer.start()
    writer.record(request(0))
    await writer.flush()  # the schema, the compiled statement: not part of what is measured
    print(
        f"{rows} rows per round, batches of {writer.settings.batch_size}, {ledger_module.EXECUTE_ROWS} rows per statement"
    )
    longest: list[float] = []
    for r in range(rounds):
        for i in range(rows):
            writer.record(request(r * rows + i + 1))
        await asyncio.sleep(0)  # the recording above is its own callback
        CALLBACKS.clear()
        start = time.thread_time()
        await writer.flush()
        spent = time.thread_time() - start
        longest.append(max(CALLBACKS) * 1e3)
        print(
            f"  round {r + 1}: longest loop callback {longest[-1]:.2f} ms CPU, loop CPU {spent / rows * 1e6:.1f} us/row"
        )
    print(f"longest callback, median of rounds: {statistics.median(longest):.2f} ms")
    await writer.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--execute-rows", type=int, default=None)
    parser.add_argument("--db", default=None, help="a database URL (default: SQLite in a temporary directory)")
    args = parser.parse_args()
    if args.execute_rows:
        ledger_module.EXECUTE_ROWS = args.execute_rows
    asyncio.events.Handle._run = _timed  # type: ignore[method-assign]
    asyncio.run(main(args.rows, args.rounds, args.db))
