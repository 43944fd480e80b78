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

#: Sets a key's TTL to ARGV[1] seconds unless it already lives longer (a bucket outlives its longest-lived row).
#: ``EXPIRE ... GT`` would do it on Redis 7, but treats a key without a TTL as living forever, and Redis 6 has none.
_RAISE_TTL = "if redis.call('TTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end"


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
        """``XADD`` the row (trimming to ``max_bucket``) and extend the stream's TTL to ``ttl`` if that is later,
        atomically: a short-lived entry never cuts short the vectors of longer-lived ones."""
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
                pipe.eval(_RAISE_TTL, 1, name, ttl)
                await pipe.execute()

    async def bucket_since(self, bucket: str, since: str | None, limit: int | None = None) -> BucketDelta:
        """``XRANGE`` after the cursor (a stream id, ``COUNT limit``), ``XLEN`` and the oldest id, in one round trip."""
        name = self.prefix + bucket
        with translated():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xrange(name, min=f"({since}" if since is not None else "-", max="+", count=limit)
                pipe.xlen(name)
                pipe.xrange(name, min="-", max="+", count=1)
                rows, length, oldest = await pipe.execute()
        members: list[BucketMember] = []
        ids: list[str] = []
        cursor = since
        for row_id, fields in rows:
            cursor = row_id.decode() if isinstance(row_id, bytes) else str(row_id)
            member = _member(fields)
            if member is not None:
                members.append(member)
                ids.append(cursor)
        first = oldest[0][0] if oldest else None
        first = first.decode() if isinstance(first, bytes) else first
        return BucketDelta(members, ids, cursor, int(length), first, since)

    async def vector_search(self) -> str:
        """Which server-side vector index this Redis offers: ``redisearch`` (``FT.SEARCH`` with HNSW/FLAT
        fields: Redis Stack, or Redis 8 with its query engine), ``vector-sets`` (Redis 8's ``VADD``/``VSIM``)
        or ``none``. The cache searches its own in-process index either way; see docs/semantic-cache.md for
        how a deployment with millions of entries per bucket would move the search to the server."""
        with translated():
            info = await self._redis.info("server")
            modules = await self._redis.module_list()
        names = {str(m.get(b"name", m.get("name", ""))).lower() for m in modules if isinstance(m, dict)}
        if any("search" in n or n in ("ft", "b'ft'") for n in names):
            return "redisearch"
        major = int(str(info.get("redis_version", "0")).split(".")[0] or 0)
        return "vector-sets" if major >= 8 else "none"

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
