"""The vector index mirrors a bucket incrementally, against both real stores, and searches it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from cache.base import BucketMember, ResponseStore
from cache.index import VectorIndex
from cache.memory import MemoryStore
from cache.redis import RedisStore
from cache.semantic import encode_vector

DIM = 8


def unit(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i % dim] = 1.0
    return v


def member(key: str, i: int, expires_at: float = 2e9) -> BucketMember:
    return BucketMember(key, encode_vector(unit(i)), f"question {key}", expires_at)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[ResponseStore]:
    if request.param == "memory":
        s: ResponseStore = MemoryStore(max_entries=100, max_bucket=4)
    else:
        s = RedisStore(redis_url, prefix=request.getfixturevalue("redis_prefix"), timeout_s=1.0, max_bucket=4)
    yield s
    await s.aclose()


async def sync(index: VectorIndex, store: ResponseStore, bucket: str) -> None:
    index.apply(bucket, await store.bucket_since(bucket, index.cursor(bucket)))


async def test_mirror_follows_the_store_incrementally(store: ResponseStore) -> None:
    index = VectorIndex(DIM, max_bucket=4)
    await store.add_vector("vs:b", member("e:a", 0), 60)
    await sync(index, store, "vs:b")
    assert [c.entry_key for c in index.search("vs:b", unit(0))] == ["e:a"]
    first_cursor = index.cursor("vs:b")
    for key, i in [("e:b", 1), ("e:c", 2)]:
        await store.add_vector("vs:b", member(key, i), 60)
    delta = await store.bucket_since("vs:b", first_cursor)
    assert [m.entry_key for m in delta.members] == ["e:b", "e:c"]  # only what is new is read
    index.apply("vs:b", delta)
    found = index.search("vs:b", unit(2), limit=2)
    assert found[0].entry_key == "e:c" and found[0].score == pytest.approx(1.0)
    assert found[0].question == "question e:c"
    assert len(index) == 3


async def test_a_key_stored_again_supersedes_its_old_row(store: ResponseStore) -> None:
    index = VectorIndex(DIM, max_bucket=4)
    await store.add_vector("vs:b", member("e:a", 0), 60)
    await store.add_vector("vs:b", member("e:b", 1), 60)
    await sync(index, store, "vs:b")
    await store.add_vector("vs:b", member("e:a", 3), 60)  # e:a now has another vector
    await sync(index, store, "vs:b")
    assert [c.entry_key for c in index.search("vs:b", unit(0)) if c.score > 0.5] == []
    assert index.search("vs:b", unit(3))[0].entry_key == "e:a"


async def test_trimmed_and_expired_buckets(store: ResponseStore) -> None:
    index = VectorIndex(DIM, max_bucket=4)
    for i in range(6):  # the store keeps the newest 4, and so does the mirror
        await store.add_vector("vs:b", member(f"e:{i}", i), 60)
        await sync(index, store, "vs:b")
    keys = {c.entry_key for c in index.search("vs:b", unit(0), limit=10)}
    assert keys == {"e:2", "e:3", "e:4", "e:5"}
    assert len(index) == 4


async def test_a_bucket_that_restarted_is_read_whole(redis_url: str, redis_prefix: str) -> None:
    import redis

    s = RedisStore(redis_url, prefix=redis_prefix, timeout_s=1.0, max_bucket=4)
    index = VectorIndex(DIM, max_bucket=4)
    for i in range(3):
        await s.add_vector("vs:b", member(f"e:{i}", i), 60)
    await sync(index, s, "vs:b")
    redis.Redis.from_url(redis_url).delete(redis_prefix + "vs:b")  # expired behind the mirror's back
    # A real expiry comes a TTL later; within the same millisecond the new stream's first id would not be
    # newer than the old rows' ids, which no bucket that really expired can see.
    await asyncio.sleep(0.005)
    await s.add_vector("vs:b", member("e:new", 5), 60)
    await sync(index, s, "vs:b")  # the old rows are older than the bucket's oldest now: forgotten
    assert [c.entry_key for c in index.search("vs:b", unit(0), limit=10)] == ["e:new"]
    assert len(index) == 1
    await s.aclose()


def test_expired_rows_never_match_and_memory_is_bounded() -> None:
    from cache.base import BucketDelta

    now = [1000.0]
    index = VectorIndex(DIM, max_bucket=100, max_vectors=5, clock=lambda: now[0])
    index.apply(
        "a", BucketDelta([member("e:old", 0, 1010.0), member("e:new", 0, 2000.0)], ["0-1", "0-2"], "0-2", 2, "0-1")
    )
    assert [c.entry_key for c in index.search("a", unit(0))] == ["e:new", "e:old"]
    now[0] = 1011.0
    assert [c.entry_key for c in index.search("a", unit(0))] == ["e:new"]
    index.apply(
        "b", BucketDelta([member(f"e:{i}", i) for i in range(4)], [f"0-{i}" for i in range(4)], "0-3", 4, "0-0")
    )
    assert len(index) <= 5 and index.cursor("a") is None  # the least recently used bucket went
    assert index.search("a", unit(0)) == []


def test_search_of_ten_thousand_rows() -> None:
    from cache.base import BucketDelta

    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((10_000, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    members = [BucketMember(f"e:{i}", encode_vector(v), "q", 2e9) for i, v in enumerate(vecs)]
    index = VectorIndex(384, max_bucket=10_000)
    index.apply("b", BucketDelta(members, [f"0-{i}" for i in range(len(members))], "0-x", len(members), "0-0"))
    found = index.search("b", vecs[1234], limit=3)
    assert found[0].entry_key == "e:1234" and found[0].score == pytest.approx(1.0, abs=1e-3)
    assert found[0].score >= found[1].score >= found[2].score


async def test_paged_reads_and_trimming_by_the_oldest_row(store: ResponseStore) -> None:
    index = VectorIndex(DIM, max_bucket=4)
    for i in range(3):
        await store.add_vector("vs:b", member(f"e:{i}", i), 60)
    first = await store.bucket_since("vs:b", None, limit=2)
    assert [m.entry_key for m in first.members] == ["e:0", "e:1"] and first.length == 3
    index.apply("vs:b", first)
    index.apply("vs:b", await store.bucket_since("vs:b", index.cursor("vs:b"), limit=2))
    assert len(index) == 3
    for i in range(3, 6):  # the store trims e:0 and e:1
        await store.add_vector("vs:b", member(f"e:{i}", i), 60)
    await sync(index, store, "vs:b")
    assert {c.entry_key for c in index.search("vs:b", unit(0), limit=10)} == {"e:2", "e:3", "e:4", "e:5"}


def test_a_full_bucket_taking_writes_matches_a_plain_copy_of_the_store() -> None:
    """Rows dropped by trimming are skipped and copied away later: searches always see exactly the store's
    rows (the newest row of each key), through trims, superseded keys, compactions and a restart."""
    from cache.base import BucketDelta

    rng = np.random.default_rng(11)
    dim, cap = 16, 50
    index = VectorIndex(dim, max_bucket=cap)
    vectors: dict[str, np.ndarray] = {}
    rows: list[tuple[str, str]] = []  # the store: (row id, entry key), oldest first, trimmed to cap
    seq = 0
    for step in range(3000):
        if step == 1700:
            rows.clear()  # the bucket expired and started again
        batch = []
        for _ in range(int(rng.integers(1, 4))):
            seq += 1
            key = f"e:{int(rng.integers(0, 8 if 1000 <= step < 2300 else 90))}"  # a few keys: many superseded
            v = rng.standard_normal(dim).astype(np.float32)
            vectors[f"{seq}"] = np.frombuffer(encode_vector(v / np.linalg.norm(v)), np.float16).astype(np.float32)
            batch.append((f"{seq}-0", key))
        rows = (rows + batch)[-cap:]
        members = [BucketMember(k, encode_vector(vectors[rid[:-2]]), f"q {rid}", 2e9) for rid, k in batch]
        index.apply("b", BucketDelta(members, [rid for rid, _ in batch], batch[-1][0], len(rows), rows[0][0]))
        assert len({k for _, k in rows}) <= len(index) <= len(rows)  # superseded rows go at compactions
        if step % 25:
            continue
        newest = {k: rid for rid, k in rows}
        query = vectors[rows[int(rng.integers(0, len(rows)))][0][:-2]]
        want = sorted(((float(vectors[rid[:-2]] @ query), k) for k, rid in newest.items()), reverse=True)
        got = index.search("b", query, limit=len(newest))
        assert [c.entry_key for c in got] == [k for _, k in want]
        assert [c.question for c in got] == [f"q {newest[c.entry_key]}" for c in got]
        assert [c.score for c in got] == pytest.approx([s for s, _ in want], abs=1e-5)
