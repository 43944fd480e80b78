"""The shared store: Redis through redis-py's asyncio client, pooled connections, a key prefix.

Every replica of the gateway pointing at the same Redis shares the entries and the semantic vectors.
Connections fail fast: short socket timeouts and no client-side retries, because the cache is an
optimisation and the service above falls back to the upstream on any error.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cache.base import newest_unique, pack_member, unpack_member
from cache.redis_errors import translated


class RedisStore:
    """Entries are ``SET key value EX ttl``; a bucket is a Redis list of packed ``(entry_key, vector)``."""

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

    async def add_vector(self, bucket: str, entry_key: str, vector: bytes, ttl: int) -> None:
        """Push the member to the list's head, trim it to ``max_bucket`` and set its TTL, atomically."""
        name = self.prefix + bucket
        member = pack_member(entry_key, vector)
        with translated():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lrem(name, 0, member)  # type: ignore[arg-type]  # redis-py's stubs say str; bytes work
                pipe.lpush(name, member)
                pipe.ltrim(name, 0, self.max_bucket - 1)
                pipe.expire(name, ttl)
                await pipe.execute()

    async def vectors(self, bucket: str) -> list[tuple[str, bytes]]:
        """``LRANGE 0 -1``, unpacked, newest first."""
        with translated():
            raw = await self._redis.lrange(self.prefix + bucket, 0, -1)
        return newest_unique([unpack_member(m) for m in raw if isinstance(m, bytes)])

    async def ping(self) -> bool:
        """Whether Redis answers."""
        with translated():
            ok: bool = await self._redis.ping()
        return ok

    async def aclose(self) -> None:
        """Close the client and its pool."""
        await self._redis.aclose()
        await self._pool.disconnect()
