"""One owned shard's bookkeeping: lanes by partition key, batches, and how far the checkpoint may go.

Pure bookkeeping with no client in it, so the rules read (and test) on their own:

- Records are numbered in the order they were read. With ParallelizationFactor N, each goes to
  lane crc32(partitionKey) % N, so one key always lands in the same lane; a lane yields a batch
  only when it has none in flight, so each key's records reach the function in order, retries
  included, while up to N batches of the shard run side by side (N = 1: the shard's own order).
- A lane's batch is ready at BatchSize records, at the 6 MB payload cap, or when the batching
  window has passed; for streams Lambda opens the window when the previous invocation of the lane
  ended, so it counts from the later of that and the oldest buffered record.
- The checkpoint may move only over a prefix of records that are all done: with several lanes a
  record done early waits for every record read before it. A record is done when its batch
  settled, or when a later part of its batch is invoked (a partial-failure retry or the second
  half of a bisection: everything before it reached its final outcome), or at once when it was
  read but could not be shaped (`skip`: reported unreadable, never sent).
- With tumbling windows (`windows`, see `broker.sources.shards.windows`) the shard has one lane,
  batches are cut at window boundaries, a window's final invocation goes out before anything of
  the next window, and the checkpoint stays before the open window's first record.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from dataclasses import dataclass, field

from broker.shard_leases import OwnedShard
from broker.sources.base import Batch, Record, take_batch
from broker.sources.shards.windows import ShardWindows

PAYLOAD_LIMIT_BYTES = 6_291_456  # Lambda's synchronous invoke limit, which caps a batch
EVENT_OVERHEAD_BYTES = 512  # the event's own keys


@dataclass(frozen=True, slots=True)
class Position:
    """A record's `handle`: where it is in its shard, and the lease token it was read under."""

    shard_id: str
    sequence: str
    index: int
    token: int


@dataclass
class _Lane:
    buffer: deque[tuple[Record, float]] = field(default_factory=deque)  # (record, read at, monotonic)
    buffered_bytes: int = 0
    in_flight: tuple[int, ...] | None = None  # read indexes of the batch out
    invoked: tuple[int, int] | None = None  # first and last read index of its latest invocation
    freed_at: float = 0.0


class ShardTrack:
    def __init__(
        self,
        shard: OwnedShard,
        lanes: int,
        batch_size: int,
        window_seconds: float,
        limit_bytes: int = PAYLOAD_LIMIT_BYTES,
        *,
        windows: ShardWindows | None = None,
    ) -> None:
        self.shard = shard
        self.windows = windows
        self.batch_size = batch_size
        self.window_seconds = window_seconds
        self.limit_bytes = limit_bytes - EVENT_OVERHEAD_BYTES
        self._lanes = [_Lane() for _ in range(lanes)]
        self._unsettled: deque[tuple[int, str]] = deque()  # (index, sequence) in read order
        self._done: set[int] = set()
        self._next_index = 0
        self.progress: str | None = shard.checkpoint  # where the checkpoint may go now
        self.checkpointed: str | None = shard.checkpoint  # what Redis holds
        self.last_read: str | None = shard.checkpoint  # the last sequence number read
        self.reading_done = False  # the reader reached the end of a closed shard
        self.idle_read_began: float | None = None  # wall clock: when the latest read finding nothing began
        self.draining = False  # another replica asked for the shard, or it is being let go
        self.lost = False  # fenced: another replica holds the lease now
        self.age_seconds = 0.0
        self.write_lock = asyncio.Lock()

    @property
    def shard_id(self) -> str:
        return self.shard.shard_id

    @property
    def token(self) -> int:
        return self.shard.token

    @property
    def lane_count(self) -> int:
        return len(self._lanes)

    # -- reading ------------------------------------------------------------------------------------
    def position(self, sequence: str) -> Position:
        index = self._next_index
        self._next_index += 1
        return Position(self.shard_id, sequence, index, self.token)

    def add(self, record: Record, partition_key: str, now: float) -> None:
        """Buffer a record read by `position()`; records must be added in read order."""
        handle = record.handle
        assert isinstance(handle, Position)
        lane = self._lanes[zlib.crc32(partition_key.encode()) % len(self._lanes)]
        lane.buffer.append((record, now))
        lane.buffered_bytes += record.size_bytes
        self._unsettled.append((handle.index, handle.sequence))
        self.last_read = handle.sequence
        if self.windows is not None:
            self.windows.assign(handle.index, record.arrived_at)

    def skip(self, position: Position) -> None:
        """A record read by `position()` but never buffered (it could not be shaped): done at once,
        so the checkpoint passes it in read order, once every record read before it is done."""
        self._unsettled.append((position.index, position.sequence))
        self._done.add(position.index)
        self.last_read = position.sequence
        self._advance()

    @property
    def buffered(self) -> int:
        return sum(len(lane.buffer) for lane in self._lanes)

    @property
    def in_flight(self) -> int:
        return sum(lane.in_flight is not None for lane in self._lanes)

    def drop_buffers(self) -> None:
        """Forget what was read and not sent: the shard's next reader reads it from the checkpoint."""
        for lane in self._lanes:
            lane.buffer.clear()
            lane.buffered_bytes = 0

    # -- batches ------------------------------------------------------------------------------------
    def take_ready(self, now: float) -> Batch | None:
        if self.draining or self.lost:
            return None
        if self.windows is not None:
            return self._take_windowed(self.windows, now)
        for number, lane in enumerate(self._lanes):
            if lane.in_flight is None and self._ready(lane, now):
                return self._take(lane, number)
        return None

    def next_deadline(self) -> float | None:
        """When the earliest batching window of a lane that could send closes."""
        closes = [
            max(lane.buffer[0][1], lane.freed_at) + self.window_seconds
            for lane in self._lanes
            if lane.buffer and lane.in_flight is None
        ]
        return min(closes, default=None)

    def invoking(self, batch: Batch) -> tuple[bool, bool]:
        """`batch` (part of a lane's batch out) is being invoked: what comes before it in that
        batch is done. Returns (a retry: the same records or their tail again, a bisection: the
        first half of what was invoked last)."""
        lane = self._lane_of(batch)
        indexes = [_index(record) for record in batch.records]
        if lane is None or lane.in_flight is None or not indexes:
            return False, False
        first, last = indexes[0], indexes[-1]
        self._done.update(index for index in lane.in_flight if index < first)
        self._advance()
        previous, lane.invoked = lane.invoked, (first, last)
        if previous is None:
            return False, False
        retry = last == previous[1] and first >= previous[0]  # the same batch, or its failed tail
        bisect = first == previous[0] and last < previous[1]  # the first half of a split
        return retry, bisect

    def settle(self, batch: Batch) -> None:
        """The batch's outcome is final: its records are done and its lane is free."""
        lane = self._lane_of(batch)
        if lane is not None and lane.in_flight is not None:
            self._done.update(lane.in_flight)
            lane.in_flight = None
            lane.invoked = None
            lane.freed_at = asyncio.get_running_loop().time()
            if self.windows is not None and batch.final:
                self.windows.closed()
        self._advance()

    @property
    def finished(self) -> bool:
        """A closed shard read to its end whose every record reached its final outcome."""
        return self.reading_done and not self._unsettled and not self.buffered and not self.in_flight

    # -- internals ----------------------------------------------------------------------------------
    def _take_windowed(self, windows: ShardWindows, now: float) -> Batch | None:
        """The one lane's next batch: the open window's final invocation once the window is over,
        else a batch cut at the window's boundary."""
        lane = self._lanes[0]
        if lane.in_flight is not None:
            return None
        first = _index(lane.buffer[0][0]) if lane.buffer else None
        if windows.is_over(first, self.reading_done, self.idle_read_began):
            final = windows.close(f"{self.shard_id}#0")
            if final is not None:
                lane.in_flight = ()  # the final invocation has no record of its own: nothing to mark done
                return final
            self._advance()
        if not self._ready(lane, now):
            return None
        batch = self._take(lane, 0)
        windows.opened(batch)
        return batch

    def _ready(self, lane: _Lane, now: float) -> bool:
        if not lane.buffer:
            return False
        if self.windows is not None and self.windows.spans_windows(
            _index(lane.buffer[0][0]), _index(lane.buffer[-1][0])
        ):
            return True  # a later window's record was read: this window's batch waits no more
        if len(lane.buffer) >= self.batch_size or lane.buffered_bytes >= self.limit_bytes:
            return True
        return now - max(lane.buffer[0][1], lane.freed_at) >= self.window_seconds

    def _take(self, lane: _Lane, number: int) -> Batch:
        limit = self.batch_size
        if self.windows is not None:  # never past the first record's window
            limit = self.windows.same_window((_index(record) for record, _ in lane.buffer), limit)
        taken, size = take_batch(lane.buffer, limit, self.limit_bytes)
        lane.buffered_bytes -= size
        lane.in_flight = tuple(_index(record) for record in taken)
        return Batch(tuple(taken), lane=f"{self.shard_id}#{number}")

    def _lane_of(self, batch: Batch) -> _Lane | None:
        name = batch.lane or ""
        shard_id, _, number = name.rpartition("#")
        if shard_id != self.shard_id or not number.isdigit():
            return None
        return self._lanes[int(number)]

    def _advance(self) -> None:
        hold = self.windows.hold if self.windows is not None else None
        while (
            self._unsettled and self._unsettled[0][0] in self._done and (hold is None or self._unsettled[0][0] < hold)
        ):
            index, sequence = self._unsettled.popleft()
            self._done.discard(index)
            self.progress = sequence


def _index(record: Record) -> int:
    handle = record.handle
    assert isinstance(handle, Position)
    return handle.index
