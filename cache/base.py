"""The response store interface: bytes under keys with a TTL, plus vector buckets for the semantic cache.

Keys arrive without the deployment's prefix (stores add their own). Values are opaque bytes (the service
serialises entries). A *bucket* is a bounded, expiring, append-only log of :class:`BucketMember` rows
(entry key, vector, the question it answers, when it expires): the semantic cache keeps one per "request
minus its last user message". Readers follow a bucket incrementally with :meth:`ResponseStore.bucket_since`
and search their own decoded copy (:mod:`cache.index`); the log is trimmed to its newest ``max_bucket`` rows.

Implementations raise only :class:`StoreError` (or another ``OSError``) on failure; the service turns those
into cache misses. The Redis store translates redis-py's errors at its boundary, so nothing imports redis-py
unless Redis is configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreError(OSError):
    """A shared store (Redis) failed; the request goes on without it."""


class StoreUnavailable(StoreError):
    """The store refused or dropped the connection, or answered with an error."""


class StoreTimeout(StoreError, TimeoutError):
    """The store did not answer in time."""


@dataclass(frozen=True, slots=True)
class BucketMember:
    """One row of a vector bucket."""

    entry_key: str
    vector: bytes  # float16, see cache.semantic.encode_vector
    question: str  # the text that was embedded (the second-stage verifier reads it)
    expires_at: float  # epoch seconds, when the entry itself expires


@dataclass(frozen=True, slots=True)
class BucketDelta:
    """What a bucket gained since a cursor: its new rows (oldest first) and their ids, the cursor after them,
    the bucket's row count now (0: it does not exist) and the id of its oldest row (rows before it are gone:
    trimmed, or the bucket expired and started again). ``since`` echoes the cursor read from.

    Row ids are ``"<int>-<int>"`` (Redis stream ids), ordered as pairs of integers (:func:`row_order`)."""

    members: list[BucketMember]
    ids: list[str]
    cursor: str | None
    length: int
    first: str | None
    since: str | None = None


def row_order(row_id: str) -> tuple[int, int]:
    """A row id as a sortable pair (``"1712-3"`` -> ``(1712, 3)``)."""
    ms, _, seq = row_id.partition("-")
    return int(ms), int(seq or 0)


class ResponseStore(Protocol):
    """Where cached answers and their vectors live (Redis, or an in-process LRU)."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None if absent or expired."""
        ...

    async def put(self, key: str, value: bytes, ttl: int) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds."""
        ...

    async def add_vector(self, bucket: str, member: BucketMember, ttl: int) -> None:
        """Append ``member`` to ``bucket`` (trimmed to the newest ``max_bucket`` rows); the bucket lives
        ``ttl`` seconds from now."""
        ...

    async def bucket_since(self, bucket: str, since: str | None, limit: int | None = None) -> BucketDelta:
        """The rows appended after cursor ``since`` (None: from the oldest), oldest first, at most ``limit``."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
