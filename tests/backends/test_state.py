"""Live per-backend state: moving averages and the figures routing reads from them."""

from __future__ import annotations

from backends.state import Ewma, LiveStats


def test_a_moving_average_starts_empty_and_follows_its_observations() -> None:
    avg = Ewma(alpha=0.5)
    assert (avg.value, avg.count, avg.get(7.0)) == (None, 0, 7.0)
    avg.update(4.0)
    assert (avg.value, avg.mean, avg.count, avg.get(7.0)) == (4.0, 4.0, 1, 4.0)
    avg.update(8.0)
    assert (avg.value, avg.count) == (6.0, 2)


def test_observations_feed_time_to_first_token_time_per_token_and_throughput() -> None:
    stats = LiveStats()
    stats.observe(ttft_s=0.2, total_s=1.2, completion_tokens=11)
    assert stats.ttft_s.value == 0.2
    assert stats.tpot_s.value == 0.1  # (1.2 - 0.2) / 10
    assert stats.output_tokens.value == 11.0
    assert stats.tokens_per_second.value == 11 / 1.2
    # without a first-token time (not streamed) the total is split with the current estimate
    stats.observe(ttft_s=None, total_s=1.0, completion_tokens=1)
    assert stats.ttft_s.count == 2 and stats.tpot_s.count == 1
