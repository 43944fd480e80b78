"""Builds the response cache the settings ask for (called from ``gateway.components.build_cache``)."""

from __future__ import annotations

import asyncio
import logging

from cache.base import ResponseStore
from cache.learn import RouteRules
from cache.memory import MemoryStore
from cache.minilm import ModelUnavailable
from cache.semantic import Embedder, SemanticEncoder, load_embedder
from cache.service import CacheService
from gateway.config import CacheSettings, Settings
from gateway.metrics import Metrics

log = logging.getLogger("gateway.cache")


def build_store(cfg: CacheSettings) -> ResponseStore:
    """Redis when a URL is configured (``cache.redis_url`` or ``REDIS_URL``), else the in-process LRU."""
    if cfg.redis_url:
        from cache.redis import RedisStore  # redis-py only when Redis is configured

        return RedisStore(
            cfg.redis_url,
            prefix=cfg.key_prefix,
            timeout_s=max(cfg.timeout_ms, cfg.write_timeout_ms) / 1000.0,
            max_connections=cfg.max_connections,
            max_bucket=cfg.semantic_max_bucket,
        )
    return MemoryStore(cfg.max_entries, cfg.semantic_max_bucket, max_bytes=cfg.max_bytes)


def _load_warm(cfg: CacheSettings) -> Embedder:
    embedder = load_embedder(cfg.semantic_model, cfg.semantic_model_dir, cfg.semantic_runtime)
    embedder.embed(["warm up the runtime"])  # the first call is slow (allocations, graph set-up)
    return embedder


async def build_encoder(cfg: CacheSettings) -> SemanticEncoder | None:
    """The embedding model, loaded in a thread; None (with an error logged) if it is not installed."""
    try:
        embedder = await asyncio.to_thread(_load_warm, cfg)
    except ModelUnavailable as exc:
        log.error("semantic cache disabled, exact-match caching only: %s", exc)
        return None
    return SemanticEncoder(embedder, timeout_s=cfg.embed_timeout_ms / 1000.0)


def semantic_rules(settings: Settings) -> dict[str, RouteRules]:
    """Each semantic route's threshold (its own, else the cache's) and error bound."""
    cfg = settings.cache
    return {
        name: RouteRules(
            threshold=route.semantic_threshold or cfg.semantic_threshold,
            max_error=route.semantic_max_error,
            floor=min(cfg.semantic_floor, route.semantic_threshold or cfg.semantic_threshold),
        )
        for name, route in settings.resolved_routes().items()
        if route.semantic_cache
    }


async def build_response_cache(settings: Settings, metrics: Metrics) -> CacheService:
    """A started :class:`CacheService` for ``settings.cache``, with the semantic routes' encoder if any."""
    cfg = settings.cache
    semantic = semantic_rules(settings)
    encoder = await build_encoder(cfg) if semantic else None
    store = build_store(cfg)
    service = CacheService(store, cfg, metrics, semantic_routes=semantic, encoder=encoder)
    await service.start()
    if encoder is not None and cfg.redis_url:
        from cache.redis import RedisStore

        if isinstance(store, RedisStore):
            try:
                offered = await store.vector_search()
            except OSError as exc:  # Redis not up yet: the cache copes, this is only information
                offered = f"unknown ({exc!r})"
            log.info("semantic cache: in-process bucket index; server-side vector search offered: %s", offered)
    return service
