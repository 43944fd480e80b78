"""The upstream session the backends send through, built as the gateway builds it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from backends import build_session


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The gateway's own session (:func:`backends.build_session`) with its default limits."""
    s = build_session(max_connections=1000, keepalive_seconds=30)
    yield s
    await s.close()
