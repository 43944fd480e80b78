"""Stored responses in the ledger's database under concurrency (not a test): puts per second and each put's
latency (queue, transaction, commit) with 1 and with N concurrent writers, on SQLite and PostgreSQL.

    python bench/response_store.py [--seconds 8] [--clients 1 100] [--pg postgresql+asyncpg://...]

Each writer puts one response record (about a short answer's size) after another under its own id, as the
Responses API does when a stream finishes; a put returns once its row is committed.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from gateway.accounting.db import open_database
from gateway.frontdoors.sql_store import SqlResponseStore

RECORD = {
    "response": {
        "id": "resp",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "w " * 80}]}],
    },
    "messages": [{"role": "user", "content": "Write a short note about load testing."}],
}


async def run(url: str, clients: int, seconds: float) -> str:
    db = await open_database(url, require=True)
    store = SqlResponseStore(db, ttl_seconds=600)
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def writer(i: int) -> None:
        k = 0
        while time.monotonic() < stop:
            t = time.perf_counter()
            await store.put("bench", f"resp_{i}_{k}", RECORD)
            latencies.append(time.perf_counter() - t)
            k += 1

    t0 = time.monotonic()
    await asyncio.gather(*(writer(i) for i in range(clients)))
    elapsed = time.monotonic() - t0
    await db.aclose()
    lat = sorted(latencies)
    ms = [lat[int(q * (len(lat) - 1))] * 1000 for q in (0.5, 0.99, 1.0)]
    return f"{url.split('+')[0]:<10} {clients:>7} {len(lat) / elapsed:>8.0f} {ms[0]:>8.1f} {ms[1]:>8.1f} {ms[2]:>8.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per configuration")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 100], help="concurrent writers")
    ap.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test", help="'' to skip")
    args = ap.parse_args()
    print(f"{'database':<10} {'writers':>7} {'puts/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for clients in args.clients:
            print(asyncio.run(run(f"sqlite+aiosqlite:///{Path(tmp) / f'{clients}.db'}", clients, args.seconds)))
    if args.pg:
        for clients in args.clients:
            print(asyncio.run(run(args.pg, clients, args.seconds)))


if __name__ == "__main__":
    main()
