"""Per-partition batching for one Kafka mapping: buffers, the batching window, one batch in flight.

Pure bookkeeping with no client in it, so the rules read (and test) on their own:

- Records wait in a partition's buffer as they were fetched, with their size, and are put in
  Lambda's shape (the `shape` callable) one batch ahead: `shape_ahead` shapes what the partition's
  next batch will take while its current batch is out, and a batch taken before that is shaped
  as it is taken. A fetch brings thousands of records at once; shaping them all there held the
  event loop for up to half a second, while replies of the other partitions' batches waited. A
  record that cannot be shaped is skipped (`shape` reports it) and its batch goes on without it.

- A partition's batch is ready when it holds BatchSize records, or 6 MB of event payload, or when
  the batching window has passed since its oldest buffered record arrived (for Kafka, Lambda starts
  the window when the first record arrives, not when the previous invocation ends).
- A partition with a batch in flight yields nothing more until that batch is settled, so its
  records reach the function in offset order, retries included.
- A revoked partition first drains: it yields no batch and keeps no record, while its batch in
  flight may still finish and be committed (it is still owned); only then is it revoked.
- Each assignment of a partition opens a new epoch. A batch read under an older epoch is no longer
  owned: its partition was revoked, another poller (or this one, afresh) re-reads its records from
  the committed offset, so it must never be committed.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.sources.base import Batch, Record

PAYLOAD_LIMIT_BYTES = 6_291_456  # Lambda's synchronous invoke limit, which caps a batch
EVENT_OVERHEAD_BYTES = 512  # the event's own keys (eventSource, bootstrapServers, ...)

Shape = Callable[[Any, int], Record | None]  # (fetched record, epoch) -> Record; None: unreadable, skipped


@dataclass(frozen=True, slots=True)
class Position:
    """A record's `handle`: its offset, and the epoch of the assignment it was read under."""

    offset: int
    epoch: int


@dataclass
class _Lane:
    epoch: int | None = None  # None: not assigned to this poller now
    buffer: deque[tuple[Any, int, float]] = field(default_factory=deque)  # (fetched, size, arrived monotonic)
    shaped: int = 0  # the first `shaped` entries hold their Record already (None: unreadable)
    buffered_bytes: int = 0
    in_flight: int | None = None  # epoch of the batch being invoked, even after a revoke
    draining: bool = False  # revoked by the group, waiting for its batch in flight before letting go


class Lanes:
    def __init__(
        self, batch_size: int, window_seconds: float, shape: Shape, limit_bytes: int = PAYLOAD_LIMIT_BYTES
    ) -> None:
        self.batch_size = batch_size
        self.window_seconds = window_seconds
        self.limit_bytes = limit_bytes - EVENT_OVERHEAD_BYTES
        self._shape = shape
        self._lanes: dict[str, _Lane] = {}
        self._epochs = itertools.count(1)
        self._turn = 0  # where the next search for a ready lane starts, so no partition starves

    # -- assignment ---------------------------------------------------------------------------------
    def assign(self, name: str) -> int:
        """Own `name` from now on (a no-op if owned); returns the epoch records are read under."""
        lane = self._lanes.setdefault(name, _Lane())
        if lane.epoch is None:
            lane.epoch = next(self._epochs)
            lane.draining = False
            self._clear(lane)
        return lane.epoch

    def drain(self, name: str) -> None:
        """Take no more from the partition (its buffer is dropped); its batch in flight stays owned."""
        lane = self._lanes.get(name)
        if lane is not None:
            lane.draining = True
            self._clear(lane)

    def revoke(self, name: str) -> None:
        """Forget the partition's buffer; a batch in flight stays in flight but is no longer owned."""
        lane = self._lanes.get(name)
        if lane is not None:
            lane.epoch = None
            lane.draining = False
            self._clear(lane)

    def restart(self, name: str) -> None:
        """Drop what was buffered: the consumer was moved to another offset (starting position)."""
        lane = self._lanes.get(name)
        if lane is not None:
            self._clear(lane)

    def epoch(self, name: str) -> int | None:
        lane = self._lanes.get(name)
        return None if lane is None else lane.epoch

    def owned(self) -> list[str]:
        return [name for name, lane in self._lanes.items() if lane.epoch is not None]

    def owns(self, batch: Batch) -> bool:
        lane = self._lanes.get(batch.lane or "")
        return lane is not None and lane.epoch is not None and lane.epoch == _epoch_of(batch)

    # -- records and batches ------------------------------------------------------------------------
    def add(self, name: str, fetched: Any, size_bytes: int, now: float) -> None:
        """Buffer one fetched record; `size_bytes` is (at least) what it adds to the event."""
        lane = self._lanes[name]
        if lane.draining:  # fetched before the revoke: the next owner reads it from the committed offset
            return
        lane.buffer.append((fetched, size_bytes, now))
        lane.buffered_bytes += size_bytes

    def shape_ahead(self, name: str) -> None:
        """Shape what the partition's next batch will take, so taking it costs nothing then."""
        lane = self._lanes.get(name)
        if lane is None or lane.epoch is None:
            return
        for index in range(lane.shaped, min(len(lane.buffer), self.batch_size)):
            fetched, size_bytes, arrived = lane.buffer[index]
            lane.buffer[index] = (self._shape(fetched, lane.epoch), size_bytes, arrived)
            lane.shaped = index + 1

    def should_pause(self, name: str) -> bool:
        """Fetch nothing more for a partition that is draining, whose batch in flight was read under an
        earlier assignment (its records come again from the committed offset and must not run beside
        it), or whose buffer holds its next batch already: a full batch while one is out, two without
        (one about to be taken), or the payload cap's worth of bytes.

        Nothing else pauses: a paused partition is missing from the fetch already sent, and its next
        record waits out the broker's long poll of that fetch (`fetch_max_wait_ms`, 500 ms). Pausing
        on every batch out, or on one full batch at BatchSize 1, cost a third of the records 500 ms at
        low load (bench/latency.py's Kafka row). Batches still run one at a time, in order (`take_ready`)."""
        lane = self._lanes.get(name)
        if lane is None:
            return False
        stale = lane.in_flight is not None and lane.in_flight != lane.epoch
        batches_ahead = len(lane.buffer) // self.batch_size + (lane.in_flight is not None)
        return stale or lane.draining or batches_ahead >= 2 or lane.buffered_bytes >= self.limit_bytes

    def take_ready(self, now: float) -> Batch | None:
        """The next ready batch of a partition with nothing in flight; it is in flight from now on."""
        names = list(self._lanes)
        for step in range(len(names)):
            name = names[(self._turn + step) % len(names)]
            lane = self._lanes[name]
            if lane.in_flight is None and lane.epoch is not None and self._ready(lane, now):
                self._turn = (self._turn + step + 1) % len(names)
                batch = self._take(name, lane, lane.epoch)
                if batch is not None:  # else every record taken was unreadable: look on
                    return batch
        return None

    def next_deadline(self) -> float | None:
        """When the earliest batching window closes, among partitions that could send a batch."""
        waiting = [
            lane.buffer[0][2] + self.window_seconds
            for lane in self._lanes.values()
            if lane.buffer and lane.in_flight is None and lane.epoch is not None
        ]
        return min(waiting, default=None)

    def settle(self, batch: Batch) -> bool:
        """The batch's outcome is final: free its partition; True if it is still owned (commit it)."""
        lane = self._lanes.get(batch.lane or "")
        if lane is None:
            return False
        owned = self.owns(batch)
        if lane.in_flight == _epoch_of(batch):
            lane.in_flight = None
        return owned

    def draining(self) -> list[str]:
        return [name for name, lane in self._lanes.items() if lane.draining]

    def in_flight(self, name: str) -> bool:
        lane = self._lanes.get(name)
        return lane is not None and lane.in_flight is not None

    # -- internals ----------------------------------------------------------------------------------
    def _ready(self, lane: _Lane, now: float) -> bool:
        if not lane.buffer:
            return False
        if len(lane.buffer) >= self.batch_size or lane.buffered_bytes >= self.limit_bytes:
            return True
        return now - lane.buffer[0][2] >= self.window_seconds

    def _take(self, name: str, lane: _Lane, epoch: int) -> Batch | None:
        """Shape the front of the buffer into a batch: at most `batch_size` records and `limit_bytes`,
        though never fewer than one record, so an oversized record still travels alone."""
        taken: list[Record] = []
        size = 0
        while lane.buffer and len(taken) < self.batch_size:
            fetched, size_bytes, _ = lane.buffer[0]
            if taken and size + size_bytes > self.limit_bytes:
                break
            lane.buffer.popleft()
            lane.buffered_bytes -= size_bytes
            if lane.shaped:
                lane.shaped -= 1
                record = fetched
            else:
                record = self._shape(fetched, epoch)
            if record is not None:
                taken.append(record)
                size += size_bytes
        if not taken:
            return None
        lane.in_flight = epoch
        return Batch(tuple(taken), lane=name)

    @staticmethod
    def _clear(lane: _Lane) -> None:
        lane.buffer.clear()
        lane.shaped = 0
        lane.buffered_bytes = 0


def _epoch_of(batch: Batch) -> int | None:
    return position_of(batch, 0).epoch if batch.records else None


def position_of(batch: Batch, index: int) -> Position:
    """Where `batch.records[index]` was read: its offset and the epoch of its assignment."""
    handle = batch.records[index].handle
    assert isinstance(handle, Position)
    return handle
