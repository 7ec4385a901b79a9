"""Per-partition batching for one Kafka mapping: buffers, the batching window, one batch in flight.

Pure bookkeeping with no client in it, so the rules read (and test) on their own:

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
from dataclasses import dataclass, field

from broker.sources.base import Batch, Record, take_batch

PAYLOAD_LIMIT_BYTES = 6_291_456  # Lambda's synchronous invoke limit, which caps a batch
EVENT_OVERHEAD_BYTES = 512  # the event's own keys (eventSource, bootstrapServers, ...)


@dataclass(frozen=True, slots=True)
class Position:
    """A record's `handle`: its offset, and the epoch of the assignment it was read under."""

    offset: int
    epoch: int


@dataclass
class _Lane:
    epoch: int | None = None  # None: not assigned to this poller now
    buffer: deque[tuple[Record, float]] = field(default_factory=deque)  # (record, arrived monotonic)
    buffered_bytes: int = 0
    in_flight: int | None = None  # epoch of the batch being invoked, even after a revoke
    draining: bool = False  # revoked by the group, waiting for its batch in flight before letting go


class Lanes:
    def __init__(self, batch_size: int, window_seconds: float, limit_bytes: int = PAYLOAD_LIMIT_BYTES) -> None:
        self.batch_size = batch_size
        self.window_seconds = window_seconds
        self.limit_bytes = limit_bytes - EVENT_OVERHEAD_BYTES
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
    def add(self, name: str, record: Record, now: float) -> None:
        lane = self._lanes[name]
        if lane.draining:  # fetched before the revoke: the next owner reads it from the committed offset
            return
        lane.buffer.append((record, now))
        lane.buffered_bytes += record.size_bytes

    def should_pause(self, name: str) -> bool:
        """Fetch nothing more for a partition that has a batch in flight or a full buffer."""
        lane = self._lanes.get(name)
        if lane is None:
            return False
        full = len(lane.buffer) >= self.batch_size or lane.buffered_bytes >= self.limit_bytes
        return lane.in_flight is not None or full or lane.draining

    def take_ready(self, now: float) -> Batch | None:
        """The next ready batch of a partition with nothing in flight; it is in flight from now on."""
        names = list(self._lanes)
        for step in range(len(names)):
            name = names[(self._turn + step) % len(names)]
            lane = self._lanes[name]
            if lane.in_flight is None and lane.epoch is not None and self._ready(lane, now):
                self._turn = (self._turn + step + 1) % len(names)
                return self._take(name, lane)
        return None

    def next_deadline(self) -> float | None:
        """When the earliest batching window closes, among partitions that could send a batch."""
        waiting = [
            lane.buffer[0][1] + self.window_seconds
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
        return now - lane.buffer[0][1] >= self.window_seconds

    def _take(self, name: str, lane: _Lane) -> Batch:
        taken, size = take_batch(lane.buffer, self.batch_size, self.limit_bytes)
        lane.buffered_bytes -= size
        lane.in_flight = _epoch_of_records(taken)
        return Batch(tuple(taken), lane=name)

    @staticmethod
    def _clear(lane: _Lane) -> None:
        lane.buffer.clear()
        lane.buffered_bytes = 0


def _epoch_of(batch: Batch) -> int | None:
    return _epoch_of_records(list(batch.records)) if batch.records else None


def _epoch_of_records(records: list[Record]) -> int:
    handle = records[0].handle
    assert isinstance(handle, Position)
    return handle.epoch
