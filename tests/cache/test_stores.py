"""Both stores behave alike: values with TTLs, bounded vector buckets (Redis is real, never faked)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from cache.base import BucketMember, ResponseStore
from cache.memory import MemoryStore
from cache.redis import RedisStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[ResponseStore]:
    if request.param == "memory":
        s: ResponseStore = MemoryStore(max_entries=100, max_bucket=3)
    else:
        prefix = request.getfixturevalue("redis_prefix")
        s = RedisStore(redis_url, prefix=prefix, timeout_s=1.0, max_bucket=3)
    yield s
    await s.aclose()


async def test_get_put(store: ResponseStore) -> None:
    assert await store.get("e:1") is None
    await store.put("e:1", b"value", 60)
    assert await store.get("e:1") == b"value"
    await store.put("e:1", b"newer", 60)
    assert await store.get("e:1") == b"newer"


async def test_ttl_expiry(store: ResponseStore) -> None:
    await store.put("e:short", b"v", 1)
    await store.put("e:long", b"v", 60)
    await asyncio.sleep(1.1)
    assert await store.get("e:short") is None
    assert await store.get("e:long") == b"v"


def _member(i: int, key: str | None = None) -> BucketMember:
    return BucketMember(key or f"e:{i}", bytes([i]) * 4, f"question {i}", 2e9)


async def test_vector_buckets_are_bounded_logs_read_incrementally(store: ResponseStore) -> None:
    empty = await store.bucket_since("v:b", None)
    assert empty.length == 0 and empty.members == []
    for i in range(2):
        await store.add_vector("v:b", _member(i), 60)
    first = await store.bucket_since("v:b", None)
    assert [m.entry_key for m in first.members] == ["e:0", "e:1"] and first.length == 2
    assert first.members[1] == _member(1)
    assert first.since is None and first.cursor is not None
    for i in range(2, 5):
        await store.add_vector("v:b", _member(i), 60)
    await store.add_vector("v:b", _member(3), 60)  # stored again: a new row (readers keep the newest)
    delta = await store.bucket_since("v:b", first.cursor)
    assert [m.entry_key for m in delta.members] == ["e:3", "e:4", "e:3"]  # e:2 was trimmed before it was read
    assert delta.length == 3 and delta.since == first.cursor  # trimmed to the newest max_bucket = 3
    whole = await store.bucket_since("v:b", None)
    assert [m.entry_key for m in whole.members] == ["e:3", "e:4", "e:3"]
    nothing_new = await store.bucket_since("v:b", delta.cursor)
    assert nothing_new.members == [] and nothing_new.cursor == delta.cursor and nothing_new.length == 3
    assert (await store.bucket_since("v:other", None)).length == 0


async def test_redis_keys_carry_the_prefix(redis_url: str, redis_prefix: str) -> None:
    s = RedisStore(redis_url, prefix=redis_prefix, timeout_s=1.0)
    await s.put("e:abc", b"x", 30)
    await s.add_vector("vs:abc", _member(1, "e:abc"), 30)
    client = redis.Redis.from_url(redis_url)
    assert client.get(redis_prefix + "e:abc") == b"x"
    assert 0 < client.ttl(redis_prefix + "e:abc") <= 30
    assert client.xlen(redis_prefix + "vs:abc") == 1
    assert 0 < client.ttl(redis_prefix + "vs:abc") <= 30
    client.close()
    await s.aclose()


async def test_a_short_lived_entry_does_not_cut_short_a_bucket(store: ResponseStore) -> None:
    """The bucket lives as long as its longest-lived row: a later entry with a short TTL (a route's smaller
    ``ttl_seconds``) does not expire the vectors of the entries stored before it."""
    await store.add_vector("v:mixed", _member(0), 60)
    await store.add_vector("v:mixed", _member(1), 1)
    await asyncio.sleep(1.2)
    members = (await store.bucket_since("v:mixed", None)).members
    assert [m.entry_key for m in members] == ["e:0", "e:1"]  # rows carry their own expiry; readers skip e:1's


async def test_memory_store_is_an_lru_with_ttls() -> None:
    clock = Clock()
    s = MemoryStore(max_entries=2, max_bucket=2, clock=clock)
    await s.put("a", b"1", 10)
    await s.put("b", b"2", 10)
    assert await s.get("a") == b"1"  # "a" is now the most recently used
    await s.put("c", b"3", 10)
    assert await s.get("b") is None and await s.get("a") == b"1" and await s.get("c") == b"3"
    clock.now += 11
    assert await s.get("a") is None and len(s) == 1
    await s.add_vector("v", _member(1), 5)
    assert (await s.bucket_since("v", None)).length == 1
    clock.now += 6
    assert (await s.bucket_since("v", None)).length == 0


async def test_memory_store_bounds_its_bytes() -> None:
    """Large answers (embeddings of many inputs) evict the least recently used until the total fits."""
    s = MemoryStore(max_entries=100, max_bytes=1000)
    for key in "abc":
        await s.put(key, b"x" * 300, 10)
    assert await s.get("a") is not None  # now the most recently used
    await s.put("d", b"y" * 300, 10)  # 1,200 bytes: "b" goes
    assert await s.get("b") is None and len(s) == 3
    await s.put("a", b"z" * 700, 10)  # the old value no longer counts: 1,300 bytes, so "c" goes
    assert [await s.get(k) for k in "acd"] == [b"z" * 700, None, b"y" * 300]
    await s.put("huge", b"h" * 2000, 10)  # larger than the whole bound: nothing of it stays
    assert len(s) == 0 and s._bytes == 0


async def test_redis_errors_surface_as_redis_errors() -> None:
    s = RedisStore("redis://127.0.0.1:1/0", timeout_s=0.2)  # nothing listens on port 1
    with pytest.raises((redis.RedisError, OSError)):
        await s.get("e:1")
    await s.aclose()


async def test_redis_reports_its_vector_search(redis_url: str) -> None:
    s = RedisStore(redis_url, timeout_s=1.0)
    offered = await s.vector_search()
    assert offered in ("none", "redisearch", "vector-sets")
    if (await s._redis.info("server"))["redis_version"].startswith(("6.", "7.")):
        assert offered in ("none", "redisearch")  # vector sets came with Redis 8
    await s.aclose()
