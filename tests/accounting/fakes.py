"""Test doubles for the accounting tests."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.hooks import CachedAnswer


class DictCache:
    """An exact-match response cache (the real one lives elsewhere), to produce cache hits."""

    def __init__(self) -> None:
        self.store_: dict[bytes, dict[str, Any]] = {}

    def _key(self, ctx: RequestContext) -> bytes:
        return orjson.dumps([ctx.requested_model, ctx.body.get("messages"), ctx.body.get("max_tokens")])

    async def lookup(self, ctx: RequestContext) -> CachedAnswer | None:
        body = self.store_.get(self._key(ctx))
        ctx.cache_status = "miss"
        return None if body is None else CachedAnswer(body=body, status="hit", original_model=body["model"])

    def store(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        self.store_[self._key(ctx)] = body

    def wants_stream(self, ctx: RequestContext) -> bool:
        return False

    def store_stream(self, ctx: RequestContext, chunks: list[dict[str, Any]]) -> None:
        return None

    async def aclose(self) -> None:
        return None
