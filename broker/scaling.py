"""How many batches a mapping keeps in flight, steered by what its reads and invocations report.

Lambda's SQS scaling, scaled down to one poller process: Lambda starts 5 concurrent batches when
messages arrive, adds up to 300 a minute while there is backlog, goes up to 1250 per mapping, and
falls back to 2 when the queue is idle; it reduces concurrency when invocations fail or are
throttled. Here a mapping idles at 2 batch loops, adds at most 5 a second while batches come back
full, drops one for each empty read, halves on a function error (unless the function reports item
failures: Lambda does not scale down then) and on a throttle. The ceiling is the source's
(`Source.desired_concurrency`, e.g. SQS's ScalingConfig.MaximumConcurrency) and the function's
ReservedConcurrentExecutions, both applied by the poller.

A throttle also pauses the mapping with exponential backoff (the config file's `Headwater: ThrottleBackoff*`), so a
throttled function is not answered by a storm of receives.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from broker.backoff import Backoff

IDLE_CONCURRENCY = 2
BURST_CONCURRENCY = 5
GROWTH_PER_SECOND = 5.0


class Scaler:
    """The demand estimate (`hint`) handed to `Source.desired_concurrency`, and the throttle pause."""

    def __init__(
        self,
        backoff_initial_seconds: float,
        backoff_max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hint = IDLE_CONCURRENCY
        self._throttle_backoff = Backoff(backoff_initial_seconds, backoff_max_seconds)
        self._clock = clock
        self._last_growth = float("-inf")
        self._paused_until = float("-inf")

    def batch_was_full(self) -> None:
        """More is waiting than one batch holds: grow, no faster than GROWTH_PER_SECOND."""
        now = self._clock()
        if self.hint < BURST_CONCURRENCY:
            self.hint = BURST_CONCURRENCY
        elif now - self._last_growth >= 1.0 / GROWTH_PER_SECOND:
            self._last_growth = now
            self.hint += 1

    def read_was_empty(self) -> None:
        self.hint = max(IDLE_CONCURRENCY, self.hint - 1)

    def function_failed(self) -> None:
        self.hint = max(1, self.hint // 2)

    def invoked(self) -> None:
        """An invocation ran: the function is taking work again, so the throttle backoff resets."""
        self._throttle_backoff.reset()

    def throttled(self) -> float:
        """Halve the demand and pause the mapping; returns the pause in seconds."""
        self.hint = max(1, self.hint // 2)
        pause = self._throttle_backoff.next()
        self._paused_until = self._clock() + pause
        return pause

    def pause_seconds(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def limit_to(self, ceiling: int) -> None:
        """Never estimate more than can run, so a shrink after a burst is not slowed by a stale hint."""
        self.hint = min(self.hint, max(1, ceiling))
