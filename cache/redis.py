"""The shared store: Redis through redis-py's asyncio client, pooled connections, a key prefix.

Every replica of the gateway pointing at the same Redis shares the entries and the semantic vectors.
Connections fail fast: short socket timeouts and no client-side retries, because the cache is an
optimisation and the service above falls back to the upstream on any error.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cache.base import BucketDelta, BucketMember
from cache.redis_errors import translated


class RedisStore:
    """Entries are ``SET key value EX ttl``; a bucket is a Redis stream (``XADD ... MAXLEN``) of rows with
    the fields ``k`` (entry key), ``v`` (vector), ``q`` (question) and ``x`` (expiry, epoch seconds)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gw:cache:",
        timeout_s: float = 0.05,
        max_connections: int = 64,
        max_bucket: int = 512,
    ) -> None:
        self.prefix = prefix
        self.max_bucket = max_bucket
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,  # waiting for a free pooled connection
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            client_name="llm-gateway-cache",
        )
        self._redis = Redis(connection_pool=self._pool)

    async def get(self, key: str) -> bytes | None:
        """``GET``."""
        with translated():
            value = await self._redis.get(self.prefix + key)
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl: int) -> None:
        """``SET ... EX ttl``."""
        with translated():
            await self._redis.set(self.prefix + key, value, ex=ttl)

    async def add_vector(self, bucket: str, member: BucketMember, ttl: int) -> None:
        """``XADD`` the row (trimming to ``max_bucket``) and refresh the stream's TTL, atomically."""
        name = self.prefix + bucket
        fields: dict[str | bytes, str | bytes | float] = {
            "k": member.entry_key,
            "v": member.vector,
            "q": member.question,
            "x": f"{member.expires_at:.3f}",
        }
        with translated():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(name, fields, maxlen=self.max_bucket, approximate=False)  # type: ignore[arg-type]
                pipe.expire(name, ttl)
                await pipe.execute()

    async def bucket_since(self, bucket: str, since: str | None) -> BucketDelta:
        """``XRANGE`` from after the cursor (a stream id) and ``XLEN``, in one round trip."""
        name = self.prefix + bucket
        with translated():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xrange(name, min=f"({since}" if since is not None else "-", max="+")
                pipe.xlen(name)
                rows, length = await pipe.execute()
        members: list[BucketMember] = []
        cursor = since
        for row_id, fields in rows:
            cursor = row_id.decode() if isinstance(row_id, bytes) else str(row_id)
            member = _member(fields)
            if member is not None:
                members.append(member)
        return BucketDelta(members, cursor, int(length), since)

    async def ping(self) -> bool:
        """Whether Redis answers."""
        with translated():
            ok: bool = await self._redis.ping()
        return ok

    async def aclose(self) -> None:
        """Close the client and its pool."""
        await self._redis.aclose()
        await self._pool.disconnect()


def _member(fields: dict[bytes, bytes]) -> BucketMember | None:
    try:
        return BucketMember(
            fields[b"k"].decode(), fields[b"v"], fields[b"q"].decode(errors="replace"), float(fields[b"x"])
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None  # a row written by something else: skipped
