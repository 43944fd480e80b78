"""How much ledger work the event loop does at once, seen from a task that runs at every turn of the loop (as a
request waiting for it would)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest


class LoopSteps:
    """Counts the rows the wrapped methods handle between two turns of the event loop: ``steps[k]`` for turn ``k``.

    ``count(cls, name)`` wraps a method whose first argument is a list of rows; ``async with`` the counter runs the
    turning task.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[int] = [0]
        self._monkeypatch = monkeypatch
        self._turning = False
        self._task: asyncio.Task[None] | None = None

    def count(self, cls: type, name: str) -> None:
        original = getattr(cls, name)

        def counted(obj: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
            self.steps[-1] += len(rows)
            return original(obj, rows, *args, **kwargs)

        self._monkeypatch.setattr(cls, name, counted)

    async def _turns(self) -> None:
        while self._turning:
            self.steps.append(0)
            await asyncio.sleep(0)

    async def __aenter__(self) -> LoopSteps:
        self._turning = True
        self._task = asyncio.create_task(self._turns())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._turning = False
        assert self._task is not None
        await self._task
