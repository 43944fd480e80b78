"""The response store interface: bytes under keys with a TTL, plus small vector buckets for the semantic cache.

Keys arrive without the deployment's prefix (stores add their own). Values are opaque bytes (the service
serialises entries). A *bucket* is a bounded, expiring list of ``(entry_key, vector)`` pairs: the semantic
cache keeps one per "request minus its last user message" and compares vectors inside it by brute force.

Implementations raise only :class:`StoreError` (or another ``OSError``) on failure; the service turns those
into cache misses. The Redis store translates redis-py's errors at its boundary, so nothing imports redis-py
unless Redis is configured.
"""

from __future__ import annotations

from typing import Protocol


class StoreError(OSError):
    """A shared store (Redis) failed; the request goes on without it."""


class StoreUnavailable(StoreError):
    """The store refused or dropped the connection, or answered with an error."""


class StoreTimeout(StoreError, TimeoutError):
    """The store did not answer in time."""


class ResponseStore(Protocol):
    """Where cached answers and their vectors live (Redis, or an in-process LRU)."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None if absent or expired."""
        ...

    async def put(self, key: str, value: bytes, ttl: int) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds."""
        ...

    async def add_vector(self, bucket: str, entry_key: str, vector: bytes, ttl: int) -> None:
        """Add (or refresh) ``entry_key``'s vector in ``bucket``; the bucket lives ``ttl`` seconds from now."""
        ...

    async def vectors(self, bucket: str) -> list[tuple[str, bytes]]:
        """The bucket's ``(entry_key, vector)`` pairs, newest first, one per entry key."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def pack_member(entry_key: str, vector: bytes) -> bytes:
    """One bucket member as bytes: a 2-byte key length, the key, then the vector."""
    raw = entry_key.encode()
    return len(raw).to_bytes(2, "little") + raw + vector


def unpack_member(member: bytes) -> tuple[str, bytes]:
    """The inverse of :func:`pack_member`."""
    n = int.from_bytes(member[:2], "little")
    return member[2 : 2 + n].decode(), member[2 + n :]


def newest_unique(members: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Keep the first (newest) vector of each entry key."""
    seen: set[str] = set()
    out: list[tuple[str, bytes]] = []
    for key, vec in members:
        if key not in seen:
            seen.add(key)
            out.append((key, vec))
    return out
