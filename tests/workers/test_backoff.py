"""The one backoff helper: doubling, capped, jittered downward only, and finite for any attempt."""

from __future__ import annotations

import pytest

from broker.backoff import Backoff, delay


def test_the_delay_doubles_from_initial_up_to_the_cap() -> None:
    assert [delay(attempt, 0.5, 30.0) for attempt in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_any_number_of_attempts_waits_the_cap_instead_of_overflowing() -> None:
    # `initial * 2.0 ** attempts` raises OverflowError from attempt 1024 on: ~85 h of a dead destination
    for attempt in (1_023, 1_024, 10_000, 10**12):
        assert delay(attempt, 1.0, 300.0) == 300.0
    assert delay(10**12, 1e300, 5.0) == 5.0  # even when the product itself would overflow
    assert delay(-3, 2.0, 10.0) == 2.0


def test_jitter_only_shortens_a_delay_and_spreads_it() -> None:
    samples = [delay(3, 1.0, 300.0, jitter=0.25) for _ in range(200)]
    assert all(6.0 <= sample <= 8.0 for sample in samples)
    assert len(set(samples)) > 100  # spread out, not one instant for every caller
    assert all(delay(50, 1.0, 300.0, jitter=1.0) <= 300.0 for _ in range(50))


@pytest.mark.parametrize("jitter", [-0.1, 1.5])
def test_jitter_is_a_fraction(jitter: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        delay(1, 1.0, 10.0, jitter=jitter)


def test_a_backoff_counts_its_attempts_and_starts_over_after_a_reset() -> None:
    backoff = Backoff(1.0, 5.0)
    assert [backoff.next() for _ in range(5)] == [1, 2, 4, 5, 5]
    assert backoff.attempts == 5
    backoff.reset()
    assert backoff.next() == 1.0
