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

Both remote stores give up on a call after 2 s, and after a failure they are left alone for
``responses.retry_after_seconds`` (:class:`StoreBreaker`): their calls fail at once, as an outage does, so a
store that stopped answering costs the Responses API one timeout, not one per request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from backends.breaker import BreakerState, CircuitBreaker
from gateway.accounting.db import Database
from gateway.config import Settings
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.frontdoors.store")
#: How long a failed remote store is left alone by default (``responses.retry_after_seconds``).
RETRY_AFTER_S = 5.0


class StoreUnavailable(GatewayError):
    """The response store did not answer (503)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "response_store_unavailable"


class StoreBreaker:
    """Fails a remote store's calls at once for a while after one failed: a store that stopped answering (a hung
    Redis or database) otherwise costs every request its timeout.

    A :class:`backends.breaker.CircuitBreaker` that one failure opens: for ``retry_after_s`` every call raises
    :class:`StoreUnavailable` without touching the store (what the client sees of an outage either way), then one
    call tries the store while the others still fail at once; its success closes the breaker, its failure opens
    it for another period. Each transition is logged once (the cause, which names the server's address, goes to
    the log only); with ``metrics``, failed calls count in ``gateway_cache_errors_total{op="response_store"}`` and
    calls refused during a cool-down in ``{op="response_store_open"}``.
    """

    def __init__(
        self,
        name: str,
        retry_after_s: float = RETRY_AFTER_S,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._breaker = CircuitBreaker(failure_threshold=1, reset_seconds=retry_after_s, clock=clock)
        self._metrics = metrics
        self._failing = False  # the last call that reached the store failed (logged once until one succeeds)

    @property
    def state(self) -> BreakerState:
        """Closed, open (calls fail at once) or half-open (the next call tries the store)."""
        return self._breaker.state

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Guard one call of the store: the ``with`` body's :class:`StoreUnavailable` opens the breaker; while it
        is open the body does not run.

        Raises:
            StoreUnavailable: the breaker is open (or the store is being tried by another call), or the body's.
        """
        breaker = self._breaker
        if not breaker.available():
            self._count("response_store_open")
            raise StoreUnavailable("The response store is unavailable: it failed moments ago.")
        call = object()  # this call, the probe's owner should it claim the probe
        breaker.before_call(call)
        try:
            yield
        except StoreUnavailable as exc:
            breaker.record_failure()
            self._count("response_store")
            if not self._failing:
                self._failing = True
                log.warning(
                    "response store (%s) unavailable, its calls fail at once for %g s between tries: %s",
                    self.name,
                    breaker.reset_seconds,
                    exc.__cause__ or exc.message,
                )
            raise
        except BaseException:  # cancelled with its request, or not the store's failure: no verdict on it
            breaker.release(call)  # frees the probe only if this call claimed it
            raise
        breaker.record_success()
        if self._failing:
            self._failing = False
            log.warning("response store (%s) answers again", self.name)

    def _count(self, op: str) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.cache_errors, op).inc()


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
    """``SET {prefix}{tenant}:{id} EX ttl`` through redis-py's asyncio client; each call gives up after 2 s, and
    after a failure the store is left alone for ``retry_after_s`` (:class:`StoreBreaker`)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl_seconds: int,
        *,
        retry_after_s: float = RETRY_AFTER_S,
        metrics: Metrics | None = None,
    ) -> None:
        from redis.asyncio import Redis  # redis-py only when Redis is configured

        self.prefix = prefix
        self.ttl = ttl_seconds
        self._redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.breaker = StoreBreaker("Redis", retry_after_s, metrics)

    def _key(self, tenant: str, response_id: str) -> str:
        return f"{self.prefix}{tenant}:{response_id}"

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        with self.breaker.call(), _translated():
            await self._redis.set(self._key(tenant, response_id), orjson.dumps(record), ex=self.ttl)

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        with self.breaker.call(), _translated():
            raw = await self._redis.get(self._key(tenant, response_id))
        if raw is None:
            return None
        record: dict[str, Any] = orjson.loads(raw)
        return record

    async def delete(self, tenant: str, response_id: str) -> bool:
        with self.breaker.call(), _translated():
            return bool(await self._redis.delete(self._key(tenant, response_id)))

    async def aclose(self) -> None:
        await self._redis.aclose()


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    from redis.exceptions import RedisError

    try:
        yield
    except RedisError as exc:  # its text names the server's address: logged (by the breaker), not told to the client
        raise StoreUnavailable(f"The response store is unavailable: {type(exc).__name__}.") from exc


def build_response_store(
    settings: Settings, db: Database | None = None, metrics: Metrics | None = None
) -> ResponseStore:
    """Redis when configured, else the ledger's database ``db`` when there is one, else in process; ``metrics``
    counts the remote stores' failures (:class:`StoreBreaker`)."""
    cfg = settings.responses
    url = cfg.redis_url or settings.cache.redis_url
    if url:
        return RedisResponseStore(
            url, cfg.redis_prefix, cfg.ttl_seconds, retry_after_s=cfg.retry_after_seconds, metrics=metrics
        )
    if db is not None:
        from gateway.frontdoors.sql_store import SqlResponseStore

        return SqlResponseStore(db, cfg.ttl_seconds, retry_after_s=cfg.retry_after_seconds, metrics=metrics)
    return MemoryResponseStore(cfg.ttl_seconds, cfg.max_entries)
