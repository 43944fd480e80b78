"""``/ready`` from state the gateway already keeps, never a probe per call.

A background task checks every backend's health every ``server.health_probe_seconds`` (the vLLM backend's
metrics scrape also marks its replicas up or down); :meth:`Readiness.snapshot` combines the last check with
the circuit breaker, so a burst of ``/ready`` calls costs the upstreams nothing. The first call waits for the
first round of checks, which starts with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from backends import Backend, CircuitBreaker

log = logging.getLogger("gateway.readiness")


class Readiness:
    """The backends' last known health, refreshed in the background."""

    def __init__(self, backends: dict[str, Backend], breakers: dict[str, CircuitBreaker], interval_s: float) -> None:
        self.backends = backends
        self.breakers = breakers
        self.interval_s = interval_s
        self.healthy: dict[str, bool] = {}
        self.checked_at = 0.0
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin checking (the first round at once)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="readiness")

    async def aclose(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check_once(self) -> None:
        """One round: every backend's health, concurrently."""
        names = list(self.backends)
        results = await asyncio.gather(*(self.backends[n].check_health() for n in names), return_exceptions=True)
        for name, ok in zip(names, results, strict=True):
            if isinstance(ok, BaseException):
                if not isinstance(ok, Exception):
                    raise ok
                log.warning("health check of %s failed: %r", name, ok)
            self.healthy[name] = ok is True
        self.checked_at = time.monotonic()
        self._first.set()

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval_s)

    async def snapshot(self, *, detail: bool) -> tuple[int, dict[str, Any]]:
        """The status code and body of ``/ready``: 200 when a backend is up (healthy at its last check and
        its breaker lets requests through), else 503; per-backend detail only when ``detail``."""
        if not self._first.is_set() and self._task is not None and not self._task.done():
            await asyncio.shield(self._first.wait())
        up = {n: self.healthy.get(n, False) and self.breakers[n].available() for n in self.backends}
        status = 200 if any(up.values()) else 503
        body: dict[str, Any] = {"status": "ready" if status == 200 else "unavailable"}
        if detail:
            age = time.monotonic() - self.checked_at if self.checked_at else None
            body["checked_seconds_ago"] = None if age is None else round(age, 3)
            body["backends"] = {
                n: {
                    "ready": up[n],
                    "breaker": self.breakers[n].state.value,
                    "error": None if up[n] else (self.backends[n].stats.last_error or None),
                }
                for n in self.backends
            }
        return status, body
