"""Tumbling windows (`TumblingWindowInSeconds`, 1-900) on one shard: bounds, the state carried
between invocations, the final invocation, and how far the checkpoint may go meanwhile.

What Lambda documents (spec §2.5), and what Headwater chose where it is silent:

- **Bounds.** Windows are aligned to the epoch in multiples of the window length and a record
  belongs to the window of its arrival time (`Record.arrived_at`: Kinesis's
  approximateArrivalTimestamp, DynamoDB's ApproximateCreationDateTime). Arrival times are
  approximate, so a record is never put in a window earlier than the record read before it: a
  shard's windows only move forward. A batch never spans two windows: the track cuts it at the
  boundary and sends what it has of a window as soon as a record of a later one is read.
- **State.** Each invocation of a window gets the `state` the previous accepted invocation of
  the same window and shard returned (`{}` first). The response must carry `state` (a JSON
  object), the final invocation's too; one without it is a failure, retried as any failure
  (`broker.stream_retry`), and a failed invocation never moves the state. A partial response
  (ReportBatchItemFailures) that carries state moves it: the records before the first failure
  are done and will not be sent again, so the handler's state is the only place they count.
- **The end of a window.** A window is over when a record of a later window was read, when a
  read that began `CLOSE_GRACE_SECONDS` after its end found nothing (Lambda waits up to two
  minutes there; Headwater closes at the first idle read after the grace), or when its shard
  ended (children start fresh windows). Then one final invocation, `isFinalInvokeForWindow`
  true and `Records` empty as Lambda sends it, carries the state; its success closes the
  window. It is an empty `Batch` marked `final` (no record counted, filtered or aged), retried
  like any batch; when its retries run out, its on-failure record names the window's range
  (first record sent to last answered) with batchSize 0, and the window closes all the same.
  A window in which no invocation returned state (every record filtered out, or every batch
  given up) closes without one. With ParallelizationFactor > 1 a windowed shard still
  runs one batch at a time: the state is per shard, so its invocations cannot run side by side.
- **Early termination.** A state over 1 MB (serialized) ends the window early: its next
  invocation is the final one, `isWindowTerminatedEarly` true, carrying that state; the rest of
  the window continues with `{}`, under the same bounds. (When the state grows past the cap in
  the first half of a bisected batch or before a partial failure's retry, the rest of that
  batch still runs first, with the big state.)
- **Durability without a store.** The state lives only in the poller's memory. The checkpoint
  is held just before a window's first record until the window's final invocation succeeded,
  so a poller that dies, drains or hands the shard over mid-window leaves the next owner to
  read the window again from its start and rebuild the state from `{}`: records of an open
  window may run twice (at-least-once, as everywhere), the state is never lost and never counts
  a record twice. The price: a long window is replayed whole after a crash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.invocation import Result, Status
from broker.logs import get_logger
from broker.sources.base import Batch, Record

STATE_LIMIT_BYTES = 1_048_576  # Lambda's cap on a shard's window state
CLOSE_GRACE_SECONDS = 1.0  # an idle read this long after a window's end closes it (clock skew, late puts)
log = get_logger(__name__)


@dataclass
class _Run:
    """The open window's invocations so far: one state carried from one invocation to the next."""

    start: float
    end: float
    first: Record  # the window's first record sent; the checkpoint stays before it until the window closed
    state: dict[str, Any] = field(default_factory=dict)
    last_answered: Record | None = None  # the latest record an accepted invocation carried
    terminated_early: bool = False


class ShardWindows:
    """One shard's tumbling windows. `ShardTrack` asks it where batches are cut and when a window
    is over; `ShardedSource` asks it for the wrapper event and hands it each response."""

    def __init__(self, length_seconds: int, shard_id: str, event_source_arn: str) -> None:
        self.length_seconds = length_seconds
        self.shard_id = shard_id
        self.event_source_arn = event_source_arn
        self._starts: dict[int, float] = {}  # read index -> window start, for records not sent yet
        self._latest_start = -math.inf
        self._run: _Run | None = None
        self.closing = False  # the final invocation is out

    # -- records and batches ------------------------------------------------------------------------
    def assign(self, index: int, arrived_at: float) -> None:
        """Note the window of a record just read (never earlier than the one read before it)."""
        start = max(arrived_at // self.length_seconds * self.length_seconds, self._latest_start)
        self._latest_start = start
        self._starts[index] = start

    def same_window(self, indexes: Iterable[int], limit: int) -> int:
        """How many of the buffered records (read indexes, in order), up to `limit`, share the
        first one's window."""
        count, first = 0, None
        for index in indexes:
            start = self._starts.get(index)
            if count == limit or (count and start != first):
                break
            first = start if count == 0 else first
            count += 1
        return count

    def spans_windows(self, first_index: int, last_index: int) -> bool:
        """Whether two buffered records are in different windows (windows only move forward, so
        the first and the last buffered records tell whether a boundary lies in between)."""
        return self._starts.get(first_index) != self._starts.get(last_index)

    def opened(self, batch: Batch) -> None:
        """A batch of the window was cut: the window's run starts with it if none is open."""
        indexes = [_index(record) for record in batch.records]
        start = self._starts.get(indexes[0], self._latest_start)
        for index in indexes:
            self._starts.pop(index, None)
        if self._run is None:
            self._run = _Run(start, start + self.length_seconds, batch.records[0])

    @property
    def hold(self) -> int | None:
        """The read index the checkpoint may not reach (the open window's first record)."""
        return None if self._run is None else _index(self._run.first)

    # -- the end of a window ------------------------------------------------------------------------
    def is_over(self, next_index: int | None, reading_done: bool, idle_read_began: float | None) -> bool:
        """Whether the open window is over, its batches all settled: `next_index` is the first
        buffered record, if any; `idle_read_began` when the latest read that found nothing began."""
        run = self._run
        if run is None or self.closing:
            return False
        if run.terminated_early:
            return True
        if next_index is not None:
            return self._starts.get(next_index, run.start) != run.start
        late = idle_read_began is not None and idle_read_began >= run.end + CLOSE_GRACE_SECONDS
        return reading_done or late

    def close(self, lane: str) -> Batch | None:
        """The final invocation: an empty batch marked `final`, concluding the window's records (its
        first sent and last answered: the lease they were read under, the range an on-failure record
        names); None when nothing of the window was answered: then the window closes here and now."""
        run = self._run
        assert run is not None
        if run.last_answered is None:
            self._run = None
            return None
        self.closing = True
        return Batch((), lane, final=True, concludes=(run.first, run.last_answered))

    def closed(self) -> None:
        """The final invocation's outcome is final: the window is done, its state forgotten."""
        self._run = None
        self.closing = False

    # -- invocations --------------------------------------------------------------------------------
    def event(self, batch: Batch, records_event: dict[str, Any]) -> dict[str, Any]:
        """Lambda's window wrapper around the source's `{"Records": [...]}`, keys in Lambda's order."""
        final = batch.final
        run = self._run
        assert run is not None, "a batch is out only while its window is open"
        return {
            "Records": [] if final else records_event["Records"],
            "window": {"start": _iso(run.start), "end": _iso(run.end)},
            "state": run.state,
            "shardId": self.shard_id,
            "eventSourceARN": self.event_source_arn,
            "isFinalInvokeForWindow": final,
            "isWindowTerminatedEarly": final and run.terminated_early,
        }

    def answered(self, batch: Batch, result: Result, failed: frozenset[str]) -> bool:
        """Take an invocation's response; False when it is a failure for lack of a state."""
        if result.status is not Status.SUCCESS or (batch.records and failed >= {r.item_id for r in batch.records}):
            return True  # failed already: the state stays as it was
        state = _state_of(result.payload)
        if state is None:
            log.warning(
                "a tumbling-window response carries no state object; the invocation failed", shard=self.shard_id
            )
            return False
        run = self._run
        if run is None or batch.final:
            return True
        run.state = state
        run.last_answered = batch.records[-1]
        if len(json.dumps(state).encode()) > STATE_LIMIT_BYTES:
            log.info("window state over 1 MB: the window ends early", shard=self.shard_id)
            run.terminated_early = True
        return True


def _state_of(payload: str) -> dict[str, Any] | None:
    try:
        answer = json.loads(payload) if payload else None
    except (ValueError, RecursionError):
        return None
    state = answer.get("state") if isinstance(answer, dict) else None
    return state if isinstance(state, dict) else None


def _index(record: Record) -> int:
    return int(record.handle.index)


def _iso(epoch_seconds: float) -> str:
    """Window bounds are whole seconds: `2026-01-01T07:04:00Z`, as Lambda writes them."""
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
