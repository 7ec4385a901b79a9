"""Exponential backoff, written once: how long to wait before trying again something that failed.

Every retry loop in Headwater (a crashed worker process or poller, a source that cannot be reached, a
throttled function, a destination that refuses writes) waits `initial * 2**attempt` seconds, capped
at `maximum`. The exponent is clamped before it is raised, so the millionth attempt waits `maximum`
like the twentieth: `2.0 ** 1024` raises OverflowError, and a loop that computed its delay that way
crashed after about a thousand failures (85 hours of a dead destination) and then crash-looped.

Jitter spreads out callers that failed together (every event of a destination that went down at
once), so they do not all come back in one burst when it returns. It only ever shortens a delay,
by a random fraction up to `jitter`, so `maximum` stays a true upper bound.
"""

from __future__ import annotations

import random

RESTART_INITIAL_SECONDS = 1.0
"""The first wait before a crashed component (a worker process, a mapping's poller) starts again."""
RESTART_MAX_SECONDS = 30.0
"""The longest a crashed component waits to start again: long enough not to spin on a persistent
fault, short enough that it is back within a minute of the fault clearing."""

_MAX_EXPONENT = 64  # 2**64 exceeds any cap divided by any initial delay we use; past it the cap applies
_random = random.SystemRandom()  # jitter needs no reproducibility, and this one is safe across forks


def delay(attempt: int, initial: float, maximum: float, *, jitter: float = 0.0) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry): `initial`, doubling
    per attempt, never above `maximum`, shortened by up to `jitter` (a fraction, 0 to 1) of itself."""
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter is a fraction between 0 and 1, not {jitter}")
    exponent = min(max(attempt, 0), _MAX_EXPONENT)
    seconds = min(maximum, initial * 2.0**exponent)  # a float product overflows to inf, never raises
    if jitter:
        seconds *= 1.0 - jitter * _random.random()
    return seconds


class Backoff:
    """A retry loop's state: `next()` gives the wait before the next try and counts it; `reset()`
    after a success, so the next failure starts again from `initial`."""

    def __init__(self, initial: float, maximum: float, *, jitter: float = 0.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.attempts = 0
        """How many delays were handed out since the last reset."""

    def next(self) -> float:
        seconds = delay(self.attempts, self.initial, self.maximum, jitter=self.jitter)
        self.attempts += 1
        return seconds

    def reset(self) -> None:
        self.attempts = 0
