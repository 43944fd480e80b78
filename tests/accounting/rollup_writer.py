"""A ledger writer in its own process, for the concurrent-writers test:

    python -m tests.accounting.rollup_writer URL SEED ROWS BATCH

writes ``ROWS`` rows generated from ``SEED`` (see :func:`workload`) through :class:`SqlLedger`, all in the same
few minutes as any other seed's, so that two writers add to the same rollup rows at once.
"""

from __future__ import annotations

import asyncio
import sys

from gateway.accounting import SqlLedger, open_database
from gateway.accounting.ledger import Row
from gateway.config import LedgerSettings
from tests.accounting.rollup_support import random_rows


def workload(seed: int, n: int) -> list[Row]:
    """``n`` rows over three minutes, two keys, two models (the same buckets whatever the seed)."""
    return random_rows(seed, n, span_ms=180_000, models=("model-0", "model-1"), first_id=seed * 1_000_000)


async def _flush(led: SqlLedger) -> None:
    for _ in range(200):  # a deadlock or lock timeout rolls the batch back: it is written again
        if await led.flush():
            return
        await asyncio.sleep(0.05)
    raise SystemExit("the batch could not be written")


async def main(url: str, seed: int, n: int, batch: int) -> None:
    db = await open_database(url, require=True)
    led = SqlLedger(db, LedgerSettings(url=url, batch_size=batch, max_batch_rows=batch))
    for row in workload(seed, n):
        led.append(row)
        if led.pending >= batch:
            await _flush(led)
    await _flush(led)
    await led.aclose()
    print(f"wrote {n}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
