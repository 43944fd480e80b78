"""Live per-backend state that routing reads and the pipeline and scrapers update.

All updates happen on the event loop (no locks needed). Moving averages are exponentially weighted so a
change in a backend's speed shows within a few requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Ewma:
    """An exponentially weighted moving average that starts empty."""

    alpha: float = 0.2
    #: the average (meaningful once ``count`` > 0); a plain float, so routing reads it with no object to follow
    mean: float = 0.0
    count: int = 0

    @property
    def value(self) -> float | None:
        """The average, or None before any observation."""
        return self.mean if self.count else None

    def update(self, x: float) -> None:
        """Fold ``x`` into the average."""
        self.mean = self.mean + self.alpha * (x - self.mean) if self.count else x
        self.count += 1

    def get(self, default: float) -> float:
        """The average, or ``default`` before any observation."""
        return self.mean if self.count else default


@dataclass(slots=True)
class QueueState:
    """What vLLM's ``/metrics`` said at the last scrape."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    scraped_at: float = 0.0


@dataclass(slots=True)
class LiveStats:
    """Everything live that routing needs to know about one backend (or one replica)."""

    in_flight: int = 0
    ttft_s: Ewma = field(default_factory=Ewma)
    tpot_s: Ewma = field(default_factory=Ewma)  # seconds per output token after the first
    tokens_per_second: Ewma = field(default_factory=lambda: Ewma(alpha=0.1))  # aggregate throughput
    output_tokens: Ewma = field(default_factory=lambda: Ewma(alpha=0.1))
    queue: QueueState = field(default_factory=QueueState)
    healthy: bool = True
    last_error: str = ""

    def observe(self, *, ttft_s: float | None, total_s: float, completion_tokens: int, concurrency: int = 1) -> None:
        """Record one finished response's timings and size.

        ``concurrency`` is how many requests the backend was serving meanwhile (this one included): the
        aggregate throughput sample is ``completion_tokens * concurrency / total_s``, so it measures the
        server's rate while busy, never the idle time between requests.
        """
        if ttft_s is not None:
            self.ttft_s.update(ttft_s)
            if completion_tokens > 1:
                self.tpot_s.update(max(total_s - ttft_s, 0.0) / (completion_tokens - 1))
        elif completion_tokens > 0:
            # Non-streaming: split the total with the current TTFT estimate.
            ttft = min(self.ttft_s.get(total_s * 0.2), total_s)
            self.ttft_s.update(ttft)
            if completion_tokens > 1:
                self.tpot_s.update(max(total_s - ttft, 0.0) / (completion_tokens - 1))
        if completion_tokens > 0:
            self.output_tokens.update(float(completion_tokens))
            if total_s > 0:
                busy = max(concurrency, int(self.queue.running), 1)
                self.tokens_per_second.update(completion_tokens * busy / total_s)

    @property
    def load(self) -> float:
        """Requests this backend is busy with: ours in flight plus vLLM's queue (whichever is larger)."""
        return max(float(self.in_flight), self.queue.running + self.queue.waiting)
