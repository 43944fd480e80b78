"""Stored responses (``store``, ``previous_response_id``, ``GET``/``DELETE /v1/responses/{id}``).

A record is the response object the client saw, the conversation so far as chat messages (without
``instructions``, which OpenAI does not carry over to the next turn) and as input items (what
``GET /v1/responses/{id}/input_items`` lists). Each record holds its whole conversation: deleting a response
does not take its content out of the later turns that continued from it. Records are kept per tenant (the
caller's virtual key, or one tenant when keys are off) with a TTL: the tenant is part of the storage key,
so another key can neither read nor continue a response, and cannot even tell that it exists.

Redis when one is configured (``responses.redis_url``, default ``cache.redis_url``), shared by every
replica; else the ledger's database (:mod:`gateway.frontdoors.sql_store`); an in-process store bounded to
``responses.max_entries`` only for a runtime without a database.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

import orjson

from gateway.accounting.db import Database
from gateway.config import Settings
from gateway.errors import GatewayError

log = logging.getLogger("gateway.frontdoors.store")


class StoreUnavailable(GatewayError):
    """The response store did not answer (503)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "response_store_unavailable"


class ResponseStore(Protocol):
    """Where stored responses live."""

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        """Keep ``record`` for the store's TTL."""
        ...

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        """The tenant's record, or ``None`` (missing, expired, or another tenant's)."""
        ...

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Forget the tenant's record; whether it existed."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class MemoryResponseStore:
    """In-process, least recently stored dropped first beyond ``max_entries``."""

    def __init__(self, ttl_seconds: int, max_entries: int) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        key = (tenant, response_id)
        self._entries[key] = (time.monotonic() + self.ttl, orjson.dumps(record))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        entry = self._entries.get((tenant, response_id))
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[(tenant, response_id)]
            return None
        record: dict[str, Any] = orjson.loads(entry[1])
        return record

    async def delete(self, tenant: str, response_id: str) -> bool:
        return self._entries.pop((tenant, response_id), None) is not None

    async def aclose(self) -> None:
        self._entries.clear()


class RedisResponseStore:
    """``SET {prefix}{tenant}:{id} EX ttl`` through redis-py's asyncio client."""

    def __init__(self, url: str, prefix: str, ttl_seconds: int) -> None:
        from redis.asyncio import Redis  # redis-py only when Redis is configured

        self.prefix = prefix
        self.ttl = ttl_seconds
        self._redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def _key(self, tenant: str, response_id: str) -> str:
        return f"{self.prefix}{tenant}:{response_id}"

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        with _translated():
            await self._redis.set(self._key(tenant, response_id), orjson.dumps(record), ex=self.ttl)

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        with _translated():
            raw = await self._redis.get(self._key(tenant, response_id))
        if raw is None:
            return None
        record: dict[str, Any] = orjson.loads(raw)
        return record

    async def delete(self, tenant: str, response_id: str) -> bool:
        with _translated():
            return bool(await self._redis.delete(self._key(tenant, response_id)))

    async def aclose(self) -> None:
        await self._redis.aclose()


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    from redis.exceptions import RedisError

    try:
        yield
    except RedisError as exc:  # its text names the server's address: logged, not told to the client
        log.warning("response store (Redis) failed: %s", exc)
        raise StoreUnavailable(f"The response store is unavailable: {type(exc).__name__}.") from exc


def build_response_store(settings: Settings, db: Database | None = None) -> ResponseStore:
    """Redis when configured, else the ledger's database ``db`` when there is one, else in process."""
    cfg = settings.responses
    url = cfg.redis_url or settings.cache.redis_url
    if url:
        return RedisResponseStore(url, cfg.redis_prefix, cfg.ttl_seconds)
    if db is not None:
        from gateway.frontdoors.sql_store import SqlResponseStore

        return SqlResponseStore(db, cfg.ttl_seconds)
    return MemoryResponseStore(cfg.ttl_seconds, cfg.max_entries)
