"""redis-py's errors translated into :class:`cache.base.StoreError` at the boundary of every Redis user."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache.base import StoreTimeout, StoreUnavailable


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Re-raise redis-py's errors as :class:`StoreTimeout` / :class:`StoreUnavailable`."""
    try:
        yield
    except RedisTimeoutError as exc:
        raise StoreTimeout(str(exc) or "Redis timed out") from exc
    except RedisError as exc:
        raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
