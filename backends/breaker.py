"""A per-backend circuit breaker: closed -> open after repeated failures -> half-open probe -> closed."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    """The breaker's three states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Keeps a failing backend out of rankings until a probe request succeeds.

    ``failure_threshold`` consecutive failures open it; after ``reset_seconds`` it lets one request
    through (half-open): success closes it, failure opens it again for another period.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self._probe_owner: object = None

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN turns HALF_OPEN once the reset period passed)."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def available(self) -> bool:
        """Whether routing may consider this backend now."""
        if self._opened_at is None:  # closed: the common case, checked on every routing decision
            return True
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._probe_in_flight

    def before_call(self, owner: object) -> bool:
        """Mark the start of an attempt by ``owner`` (its request); True when it claimed the single half-open probe."""
        if self.state is BreakerState.HALF_OPEN:
            self._probe_in_flight = True
            self._probe_owner = owner
            return True
        return False

    def release(self, owner: object) -> None:
        """A call by ``owner`` ended telling nothing about the backend (the client left, or the request was the
        client's error): the half-open probe it claimed is free for the next request (else the breaker stayed
        half-open, taking no request, for ever). Only the probe's owner frees it: another call's release would let
        a second request try a recovering backend."""
        if owner is self._probe_owner:
            self._probe_in_flight = False
            self._probe_owner = None

    def record_success(self) -> None:
        """A call succeeded: close."""
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False
        self._probe_owner = None

    def record_failure(self) -> None:
        """A call failed: count it, and open (again) when the threshold is reached."""
        self._probe_in_flight = False
        self._probe_owner = None
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
