"""The embedded default store: an in-process LRU with per-entry TTLs (nothing shared across replicas)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from cache.base import newest_unique


class MemoryStore:
    """LRU of at most ``max_entries`` values and as many vector buckets, each of at most ``max_bucket`` vectors.

    ``clock`` (monotonic seconds) is injectable so tests can expire entries without sleeping.
    """

    def __init__(
        self, max_entries: int = 10_000, max_bucket: int = 512, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.max_bucket = max_bucket
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._buckets: OrderedDict[str, tuple[float, list[tuple[str, bytes]]]] = OrderedDict()

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
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl: int) -> None:
        """Store ``value`` for ``ttl`` seconds, evicting the least recently used entries beyond the bound."""
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def add_vector(self, bucket: str, entry_key: str, vector: bytes, ttl: int) -> None:
        """Put ``entry_key``'s vector first in ``bucket``, dropping its older one and the oldest beyond the bound."""
        now = self._clock()
        item = self._buckets.get(bucket)
        members = [] if item is None or item[0] <= now else [m for m in item[1] if m[0] != entry_key]
        members.insert(0, (entry_key, vector))
        del members[self.max_bucket :]
        expires = max(now + ttl, item[0] if item is not None else 0.0)
        self._buckets[bucket] = (expires, members)
        self._buckets.move_to_end(bucket)
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)

    async def vectors(self, bucket: str) -> list[tuple[str, bytes]]:
        """The bucket's members, newest first."""
        item = self._buckets.get(bucket)
        if item is None:
            return []
        if item[0] <= self._clock():
            del self._buckets[bucket]
            return []
        self._buckets.move_to_end(bucket)
        return newest_unique(item[1])

    async def aclose(self) -> None:
        """Drop everything."""
        self._entries.clear()
        self._buckets.clear()
