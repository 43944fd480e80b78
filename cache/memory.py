"""The embedded default store: an in-process LRU with per-entry TTLs (nothing shared across replicas)."""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Callable

from cache.base import BucketDelta, BucketMember, row_order


class MemoryStore:
    """LRU of at most ``max_entries`` values of ``max_bytes`` in all, and as many vector buckets, each of at most
    ``max_bucket`` vectors.

    ``clock`` (monotonic seconds) is injectable so tests can expire entries without sleeping.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bucket: int = 512,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int = 256 << 20,
    ) -> None:
        self.max_entries = max_entries
        self.max_bucket = max_bucket
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0  # the stored values' sizes, summed
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        """The live value under ``key`` (and mark it recently used)."""
        item = self._entries.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            del self._entries[key]
            self._bytes -= len(value)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl: int) -> None:
        """Store ``value`` for ``ttl`` seconds, evicting the least recently used entries beyond the bounds."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._entries[key] = (self._clock() + ttl, value)
        self._bytes += len(value)
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            self._bytes -= len(self._entries.popitem(last=False)[1][1])

    async def add_vector(self, bucket: str, member: BucketMember, ttl: int) -> None:
        """Append ``member`` to ``bucket``, dropping the oldest rows beyond the bound."""
        now = self._clock()
        item = self._buckets.get(bucket)
        if item is None or item.expires <= now:
            item = _Bucket()
            self._buckets[bucket] = item
        self._seq += 1
        item.rows.append((self._seq, member))
        del item.rows[: max(0, len(item.rows) - self.max_bucket)]
        item.expires = max(now + ttl, item.expires)
        self._buckets.move_to_end(bucket)
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)

    async def bucket_since(self, bucket: str, since: str | None, limit: int | None = None) -> BucketDelta:
        """The rows after cursor ``since`` (ids ``0-<sequence number>``), oldest first, at most ``limit``."""
        item = self._buckets.get(bucket)
        if item is not None and item.expires <= self._clock():
            del self._buckets[bucket]
            item = None
        if item is None or not item.rows:
            return BucketDelta([], [], since, 0, None, since)
        self._buckets.move_to_end(bucket)
        after = row_order(since)[1] if since is not None else -1
        start = bisect.bisect_right(item.rows, after, key=lambda row: row[0])  # rows are in sequence order
        new = item.rows[start : start + limit if limit is not None else None]
        ids = [f"0-{seq}" for seq, _ in new]
        cursor = ids[-1] if ids else since
        return BucketDelta([m for _, m in new], ids, cursor, len(item.rows), f"0-{item.rows[0][0]}", since)

    async def aclose(self) -> None:
        """Drop everything."""
        self._entries.clear()
        self._bytes = 0
        self._buckets.clear()


class _Bucket:
    __slots__ = ("expires", "rows")

    def __init__(self) -> None:
        self.expires = 0.0
        self.rows: list[tuple[int, BucketMember]] = []
