"""One owned shard's reader: GetRecords in a loop, records into the shard's track, backoff on refusals.

How it keeps its part of the acknowledgement contract: reading never acknowledges anything. A
reader runs only while its replica holds the shard's lease (`broker.sources.shards.ownership`
starts it on a take and cancels it on a loss or a handoff); it opens its iterator after the last
record read (the checkpoint when it starts), so a batch whose outcome was not final when the
previous owner died is read again. It stops on its own once its shard is drained or fenced, and
marks a closed shard read to its end (`reading_done`) so the shard can be checkpointed at
SHARD_END once everything read settled.

A record that cannot be shaped (the service's `shape` raises on input it did not foresee) stops only
itself: it is logged with its traceback, its reason goes to the source's `unreadable` (the poller
counts it and shows it as the mapping's LastProcessingResult), and the track counts it as done at
once, so the checkpoint passes it in order, once every record read before it is done, and the shard
reads on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from broker.backoff import Backoff
from broker.errors import SourceError
from broker.logs import get_logger
from broker.sources.shards.service import Fetched, IteratorExpiredError, ShardService, ThrottledError
from broker.sources.shards.track import Position, ShardTrack

THROTTLE_BACKOFF_SECONDS = (0.5, 10.0)
ERROR_BACKOFF_SECONDS = (1.0, 30.0)
BUFFERED_BATCHES = 2  # per lane: how far a reader reads ahead of the batches sent
log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ReadPace:
    """How often a shard is read: at once while records come (`busy`), else every `idle` seconds."""

    idle_seconds: float
    busy_seconds: float
    limit: int  # records per read


class ShardReader:
    """Reads one shard into its track until the shard ends, is drained, or was lost."""

    def __init__(
        self,
        service: ShardService,
        track: ShardTrack,
        pace: ReadPace,
        *,
        on_records: Callable[[], None],
        on_caught_up: Callable[[], None],
        on_end: Callable[[], None],
    ) -> None:
        self.service = service
        self.track = track
        self.pace = pace
        self._on_records = on_records  # something may be ready to send: wake `read_batch`
        self._on_caught_up = on_caught_up  # the shard's iterator age fell to 0
        self._on_end = on_end  # a closed shard was read to its end: balance now
        self._iterator: str | None = None
        self._opened = False

    async def run(self) -> None:
        """GetRecords at once while records come, about once a second when idle."""
        throttles, errors = Backoff(*THROTTLE_BACKOFF_SECONDS), Backoff(*ERROR_BACKOFF_SECONDS)
        track = self.track
        while not (track.draining or track.lost):
            if track.buffered >= BUFFERED_BATCHES * track.batch_size * track.lane_count:
                await asyncio.sleep(self.pace.busy_seconds)
                continue
            try:
                fetched, began = await self._read()
            except ThrottledError as error:
                log.info("shard read throttled; backing off", shard=track.shard_id, error=error.message)
                await asyncio.sleep(throttles.next())
                continue
            except IteratorExpiredError:
                self._opened = False
                continue
            except SourceError as error:
                log.warning("shard read failed; retrying", shard=track.shard_id, error=error.message)
                self._opened = False
                await asyncio.sleep(errors.next())
                continue
            throttles.reset()
            errors.reset()
            if fetched is None:
                break
            self._iterator = fetched.next_iterator
            self._take_in(fetched, began)
            if self._iterator is None:
                break
            await asyncio.sleep(self.pace.busy_seconds if fetched.records else self.pace.idle_seconds)
        if self._iterator is None and self._opened:
            track.reading_done = True
            self._on_end()

    async def _read(self) -> tuple[Fetched | None, float]:
        """One GetRecords (opening the iterator first when needed); None when the shard has ended."""
        if not self._opened:
            track = self.track
            self._iterator = await self.service.open_iterator(
                track.shard_id, track.last_read, track.shard.from_first_record
            )
            self._opened = True
        if self._iterator is None:
            return None, 0.0
        began = time.time()
        return await self.service.fetch(self._iterator, self.pace.limit), began

    def _take_in(self, fetched: Fetched, began: float) -> None:
        track, service, now = self.track, self.service, time.monotonic()
        for raw in fetched.records:
            position: Position | None = None
            try:
                position = track.position(service.sequence_of(raw))
                record = service.shape(raw, position)
                partition_key = service.partition_key_of(raw)
            except Exception as error:  # logged with its traceback below; the record is skipped
                log.exception("shard record cannot be shaped; skipping it", shard=track.shard_id)
                self._skip(position, error)
                continue
            track.add(record, partition_key, now)
        if fetched.records or track.windows is not None:  # an idle read may have ended a window
            self._on_records()
        if fetched.records:
            return
        track.idle_read_began = began
        if not track.buffered and not track.in_flight:
            track.age_seconds = 0.0  # caught up: nothing waits in this shard
            self._on_caught_up()

    def _skip(self, position: Position | None, error: Exception) -> None:
        """Step over a record the service could not shape (see the module docstring). Without a
        position (its sequence number could not be read) the next record's checkpoint passes it."""
        where = f"{self.track.shard_id}@{position.sequence if position else '?'}"
        self.service.unreadable.append(f"{where}: {type(error).__name__}: {error}")
        if position is not None:
            self.track.skip(position)
