"""The monitor's daily budget: what its own calls cost today (UTC), against ``quality.daily_budget_usd``."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal


def utc_day(ts: float) -> str:
    """``YYYY-MM-DD`` of epoch seconds ``ts`` in UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


class DailySpend:
    """Monitoring spend of the current UTC day; a new day starts from zero.

    The check happens before a sample starts, so a day may end over the cap by at most what the samples
    already running when it was reached cost (``quality.concurrency`` of them).
    """

    def __init__(self, budget_usd: Decimal, clock: Callable[[], float] = time.time) -> None:
        self.budget_usd = budget_usd
        self._clock = clock
        self.day = utc_day(clock())
        self._spent = Decimal(0)

    def _roll(self) -> None:
        today = utc_day(self._clock())
        if today != self.day:
            self.day, self._spent = today, Decimal(0)

    @property
    def spent_usd(self) -> Decimal:
        """Spent so far today."""
        self._roll()
        return self._spent

    def add(self, usd: Decimal) -> None:
        """Count ``usd`` spent now."""
        self._roll()
        self._spent += usd

    def load(self, day: str, usd: Decimal) -> None:
        """Start from what the ledger says was spent on ``day`` (another process, or before a restart)."""
        self._roll()
        if day == self.day:
            self._spent = max(self._spent, usd)

    def exhausted(self) -> bool:
        """Whether today's budget is used up."""
        return self.spent_usd >= self.budget_usd
