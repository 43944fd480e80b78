"""Work that runs after the response: recording a request, closing its upstream stream.

The tasks are referenced here until they end (the event loop keeps only weak references to tasks), so the
lifespan can wait for them at shutdown, before the ledger closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

# One set per process, like the event loop's own task registry: the lifespan drains it.
_TASKS: set[asyncio.Task[None]] = set()


def run_in_background(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``coro`` as a task that is referenced until it ends."""
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return task


async def drain_background() -> None:
    """Wait for requests still being recorded (called at shutdown, before the ledger closes)."""
    while _TASKS:
        await asyncio.gather(*list(_TASKS), return_exceptions=True)


async def wait_recorded() -> None:
    """Wait until the requests being recorded now are (not those that start meanwhile): a caller that just got
    its response may ask about it before its ledger row was queued."""
    if _TASKS:
        await asyncio.gather(*list(_TASKS), return_exceptions=True)
