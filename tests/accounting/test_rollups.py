"""The rollups' sums equal the raw rows' sums, exactly, for any range and grouping (property-based, SQLite and
PostgreSQL), whatever the batches, retries and concurrent writers."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.accounting import SqlLedger, open_database
from gateway.accounting.queries import latency, spend, split_range, totals
from gateway.accounting.schema import GRAINS_MS
from gateway.config import LedgerSettings
from tests.accounting.rollup_support import BASE_MS, Spec, as_tuple, clear, make_row, reference

GROUP_BYS = ("model", "key", "team", "user", "route", "day")
_3_DAYS_MS = 3 * 86_400_000


def _name(prefix: str, n: int) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.sampled_from([f"{prefix}{i}" for i in range(n)]))


_latency = st.one_of(st.none(), st.floats(min_value=0, max_value=60_000, allow_nan=False))
specs = st.builds(
    Spec,
    offset_ms=st.one_of(
        st.integers(0, _3_DAYS_MS),
        st.integers(0, 3).map(lambda h: h * 3_600_000 - 123),  # on a bucket's edge
        st.integers(0, 200_000),  # crowded into the first minutes
    ),
    key=_name("key-", 3),
    model=_name("model-", 3),
    user=_name("user-", 4),
    team=_name("team-", 2),
    route=_name("route-", 2),
    prompt=st.integers(0, 100_000),
    completion=st.integers(0, 100_000),
    cost_units=st.integers(0, 10**14),
    baseline_units=st.integers(0, 10**14),
    status=st.sampled_from([200, 200, 200, 429, 500]),
    cache=st.sampled_from(["miss", "hit", "semantic-hit", "bypass"]),
    total_ms=_latency,
    ttft_ms=_latency,
)
bound = st.one_of(st.none(), st.integers(-60_000, _3_DAYS_MS + 60_000))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    workload=st.lists(specs, min_size=0, max_size=60),
    batch_size=st.integers(1, 40),
    retried=st.integers(0, 10),
    ranges=st.lists(st.tuples(bound, bound), min_size=1, max_size=3),
)
def test_rollup_sums_equal_raw_sums(
    db_url: str, workload: list[Spec], batch_size: int, retried: int, ranges: list[tuple[int | None, int | None]]
) -> None:
    asyncio.run(_check(db_url, workload, batch_size, retried, ranges))


async def _check(
    url: str, workload: list[Spec], batch_size: int, retried: int, ranges: list[tuple[int | None, int | None]]
) -> None:

    db = await open_database(url, require=True)
    await clear(db.engine)
    led = SqlLedger(db, LedgerSettings(url=url, batch_size=batch_size, max_batch_rows=batch_size))
    rows = [make_row(s, i) for i, s in enumerate(workload)]
    for row in rows:
        led.append(dict(row))
    assert await led.flush()
    for row in rows[:retried]:  # batches retried after a commit whose reply was lost
        led.append(dict(row))
    assert await led.flush()
    try:
        for lo, hi in [(None, None), *ranges]:
            start = None if lo is None else BASE_MS + lo
            end = None if hi is None else BASE_MS + hi
            for group_by in GROUP_BYS:
                got = {r.group: as_tuple(r) for r in await spend(db.engine, group_by, start_ms=start, end_ms=end)}
                assert got == reference(rows, group_by, start, end), (group_by, start, end)
            for key in ("key-0", "key-1"):
                got = {
                    r.group: as_tuple(r)
                    for r in await spend(db.engine, "model", start_ms=start, end_ms=end, key_id=key)
                }
                assert got == reference(rows, "model", start, end, key), (key, start, end)
            total = as_tuple(await totals(db.engine, start_ms=start, end_ms=end))
            expected = reference(rows, "day", start, end)
            assert total[0] == sum(v[0] for v in expected.values())
            assert total[3] == sum((v[3] for v in expected.values()), start=total[3] * 0)
            await _check_latency_counts(db.engine, rows, start, end)
    finally:
        await led.aclose()


async def _check_latency_counts(engine: Any, rows: list[dict[str, Any]], start: int | None, end: int | None) -> None:
    """Every successful, uncached, timed request of the range is in its model's histogram, once."""
    expected: dict[str, int] = {}
    for r in rows:
        if (start is not None and r["ts_ms"] < start) or (end is not None and r["ts_ms"] >= end):
            continue
        timed = r["chosen_model"] and r["status_code"] < 400 and r["cache_status"] not in ("hit", "semantic-hit")
        if timed and r["total_ms"] is not None:
            expected[r["chosen_model"]] = expected.get(r["chosen_model"], 0) + 1
    got = {m: v["samples"] for m, v in (await latency(engine, start_ms=start, end_ms=end)).items() if v["samples"]}
    assert got == expected


@given(st.one_of(st.none(), st.integers(0, 10**13)), st.one_of(st.none(), st.integers(0, 10**13)))
def test_a_range_is_covered_once_by_its_parts(start: int | None, end: int | None) -> None:
    parts = split_range(start, end)
    if start is not None and end is not None and start >= end:
        assert parts == []
        return
    edges = [(p.start_ms, p.end_ms) for p in parts]
    assert edges[0][0] == start and edges[-1][1] == end
    for (_, a), (b, _) in itertools.pairwise(edges):
        assert a == b is not None
    for p in parts:
        if p.grain is not None:
            width = GRAINS_MS[p.grain]
            assert p.start_ms is None or p.start_ms % width == 0
            assert p.end_ms is None or p.end_ms % width == 0
        else:
            assert (
                p.start_ms is not None and p.end_ms is not None and p.end_ms - p.start_ms < 120_000
            )  # at most two partial minutes


async def test_two_processes_writing_the_same_buckets_add_up_exactly(db_url: str) -> None:
    import sys

    from tests.accounting.rollup_writer import workload

    db = await open_database(db_url, require=True)  # migrated once, before the writers race
    n, batch = 400, 20
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.accounting.rollup_writer",
            db_url,
            str(seed),
            str(n),
            str(batch),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for seed in (1, 2)
    ]
    for p in procs:
        out, err = await asyncio.wait_for(p.communicate(), 120)
        assert p.returncode == 0, err.decode()
        assert out.decode().strip() == f"wrote {n}"
    rows = workload(1, n) + workload(2, n)
    try:
        for group_by in GROUP_BYS:
            got = {r.group: as_tuple(r) for r in await spend(db.engine, group_by)}
            assert got == reference(rows, group_by, None, None), group_by
        minute = 60_000 * (BASE_MS // 60_000 + 1)  # a range read from minute rollups and raw edges
        got = {
            r.group: as_tuple(r) for r in await spend(db.engine, "user", start_ms=minute - 1, end_ms=minute + 61_000)
        }
        assert got == reference(rows, "user", minute - 1, minute + 61_000)
    finally:
        await db.aclose()
