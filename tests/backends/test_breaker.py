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
    b.before_call("a")  # the single probe
    assert not b.available()
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.available()


def test_failed_probe_reopens_for_another_period() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_seconds=5, clock=clock)
    b.record_failure()
    clock.now = 5.0
    b.before_call("a")
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


def test_only_the_probe_s_owner_frees_it() -> None:
    """A call that ends telling nothing (its client left) frees the half-open probe only if it claimed it: a request
    that began before the breaker opened and is released while another holds the probe lets no second probe in."""
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_seconds=5, clock=clock)
    early, probe = object(), object()
    assert not b.before_call(early)  # closed: no probe to claim
    b.record_failure()  # another request's failure opens it
    clock.now = 5.0
    assert b.before_call(probe) and not b.available()
    b.release(early)  # the early request's client left
    assert not b.available()
    b.release(probe)
    assert b.available() and b.state is BreakerState.HALF_OPEN
    assert b.before_call(early)  # the next probe is the early one's now; a stale release of the last one is ignored
    b.release(probe)
    assert not b.available()
