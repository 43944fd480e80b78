"""The circuit breaker: opens after repeated failures, lets one probe through, closes on success."""

from __future__ import annotations

from backends.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_open_half_open_closed() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, reset_seconds=10, clock=clock)
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED and b.available()
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.available()
    clock.now = 10.0
    assert b.state is BreakerState.HALF_OPEN and b.available()
    b.before_call()  # the single probe
    assert not b.available()
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.available()


def test_failed_probe_reopens_for_another_period() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_seconds=5, clock=clock)
    b.record_failure()
    clock.now = 5.0
    b.before_call()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.now = 9.9
    assert not b.available()
    clock.now = 10.0
    assert b.available()


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(failure_threshold=2, reset_seconds=5)
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
