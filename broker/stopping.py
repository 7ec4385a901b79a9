"""Waits a stop cuts short: a backoff sleep, and a source's read.

A poller that is told to stop must neither sit out a backoff nor wait for a long poll to end (an
SQS receive waits up to 20 s): `stop()` has to take effect at once, and whatever the cut-short read
had taken comes back from its source unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_or_timeout(event: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when `event` is set first (a stop must not wait out a backoff)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def unless_stopped(read: Coroutine[Any, Any, T | None], stopping: asyncio.Event) -> T | None:
    """Await a read unless `stopping` is set first; an abandoned read is cancelled (its records,
    never settled, come back from the source).

    The read runs in the caller's own task, not a task of its own: a batch just read then goes
    on to its invocation before another loop's next read starts, which would otherwise take the
    event loop first (at low load, a millisecond or two added to every batch)."""
    if stopping.is_set():
        read.close()
        return None
    task = asyncio.current_task()
    assert task is not None, "reads run in a batch loop's task"
    watcher = asyncio.ensure_future(stopping.wait())
    state = {"reading": True, "interrupted": False}

    def interrupt(_: asyncio.Future[Any]) -> None:
        if state["reading"] and not watcher.cancelled():  # a late callback must never cancel what follows
            state["interrupted"] = True
            task.cancel()

    watcher.add_done_callback(interrupt)
    try:
        result = await read
    except asyncio.CancelledError:
        if state["interrupted"] and task.uncancel() == 0:  # our own interruption, not the caller's
            return None
        raise
    finally:
        state["reading"] = False
        watcher.cancel()
    if state["interrupted"]:  # the read finished all the same: its batch is processed as usual
        task.uncancel()
    return result
