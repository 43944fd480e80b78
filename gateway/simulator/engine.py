"""Scheduling and timing for the backend simulator: a FIFO concurrency limiter that
plays the role of vLLM's ``max_num_seqs``, the per-profile timing model, and counters."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from gateway.simulator.profiles import SimProfile

__all__ = ["FifoLimiter", "Pacer", "SimStats", "TimingModel"]


class FifoLimiter:
    """At most ``limit`` holders at once; the others wait in strict arrival order.

    A waiter that is cancelled (client disconnected) leaves the queue immediately, and a
    slot handed to a waiter that was cancelled at the same moment is passed on.
    """

    def __init__(self, limit: int) -> None:
        """Create a limiter admitting ``limit`` concurrent holders."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Number of requests queued for a slot."""
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> None:
        """Wait (FIFO) for a slot."""
        if self.running < self.limit and not self._waiters:
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was already ours: hand it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        """Give a slot back, handing it straight to the oldest live waiter if any."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with limiter.slot():`` acquire and always release."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()


class TimingModel:
    """Turns a profile into concrete delays (seconds), scaled by ``time_scale``."""

    def __init__(self, profile: SimProfile, time_scale: float) -> None:
        """Model ``profile`` with every delay multiplied by ``time_scale``."""
        if time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        self.profile = profile
        self.time_scale = time_scale

    def _jitter(self, rng: random.Random) -> float:
        j = self.profile.jitter
        return 1.0 + rng.uniform(-j, j) if j else 1.0

    def ttft_s(self, prompt_tokens: int, rng: random.Random, factor: float = 1.0) -> float:
        """Time to first token: base + per-prompt-token prefill, with jitter."""
        p = self.profile
        ms = p.ttft_base_ms + p.ttft_per_prompt_token_ms * prompt_tokens
        return ms / 1000.0 * self._jitter(rng) * self.time_scale * factor

    def token_s(self, rng: random.Random, factor: float = 1.0) -> float:
        """Decode time of one more token, with jitter."""
        return self.profile.per_token_ms / 1000.0 * self._jitter(rng) * self.time_scale * factor

    def embedding_s(self, prompt_tokens: int, factor: float = 1.0) -> float:
        """Latency of an embeddings request (a short prefill-only pass)."""
        ms = 2.0 + self.profile.ttft_per_prompt_token_ms * prompt_tokens
        return ms / 1000.0 * self.time_scale * factor


class Pacer:
    """Sleeps until absolute deadlines so per-token overheads do not accumulate."""

    def __init__(self) -> None:
        """Start the clock now."""
        self._loop = asyncio.get_running_loop()
        self.start = self._loop.time()
        self._deadline = self.start

    def elapsed(self) -> float:
        """Seconds since the pacer started."""
        return self._loop.time() - self.start

    async def advance(self, seconds: float) -> None:
        """Move the deadline ``seconds`` forward and sleep until it."""
        self._deadline += seconds
        delay = self._deadline - self._loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)


@dataclass
class SimStats:
    """Request counters reported by ``GET /_sim/stats``."""

    received: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    def to_json(self, limiter: FifoLimiter, faults_injected: int) -> dict[str, Any]:
        """Counters plus the limiter's live running/waiting numbers."""
        return {
            "requests_received": self.received,
            "requests_completed": self.completed,
            "requests_failed": self.failed,
            "requests_cancelled": self.cancelled,
            "faults_injected": faults_injected,
            "running": limiter.running,
            "waiting": limiter.waiting,
            "max_concurrency": limiter.limit,
        }
