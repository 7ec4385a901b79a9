"""A running sharded stream mapping (Kinesis, DynamoDB Streams): the face the generic runner sees.

How it keeps the acknowledgement contract written on `Source`:

- The checkpoint (a sequence number, kept with the shard's lease in Redis) moves only once records
  reached their final outcome: in `settle`, and, while a batch is still being retried, over the
  part of it that is done already (see `track`). It is written with the lease's fencing token, so
  a replica whose lease was taken can never move it; a refused write marks the shard lost here
  (`ownership`).
- A poller that dies leaves the checkpoint where it was: the next owner reads again after it, so
  the batch that was out runs again (duplicates are possible, loss is not). Its leases lapse
  within one lease period and another replica (or its own restart) takes them.
- Only shards whose lease this replica holds are read (`reader`, started and stopped by
  `ownership`'s lease loop); a lost shard's batches are no longer `owns`ed, so `stream_retry`
  stops retrying them and `settle` writes nothing for them. A shard another replica asked for is
  drained first (its batches out settle and checkpoint), then handed over, so two replicas never
  run a shard's records at the same time.
- A closed shard is read to its end; once every record of it settled its checkpoint is written as
  SHARD_END, which makes its children eligible (a child never starts before its parents end).
- With TumblingWindowInSeconds the checkpoint also waits for each window's final invocation; the
  window state lives in memory only and is rebuilt by reading the window again after a crash
  (`broker.sources.shards.windows`).

A subclass supplies the service's calls (`list_shards`, `open_iterator`, `fetch`: `service.ShardService`)
and its shapes (`shape`, `shape_event`, `failure_record_info`); the rest is the same for every
sharded stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from broker import metrics
from broker.errors import SourceError
from broker.logs import get_logger
from broker.settings import get_settings
from broker.shard_leases import DEFAULT_LEASE_SECONDS, ShardInfo, ShardLeases
from broker.sources.base import Batch, Record, Source, SourceContext
from broker.sources.shards.ownership import ShardOwnership
from broker.sources.shards.reader import ReadPace
from broker.sources.shards.service import Fetched
from broker.sources.shards.track import Position, ShardTrack

if TYPE_CHECKING:
    from broker.invocation import Result
    from broker.mapping import EventSourceMapping

READ_WAIT_SECONDS = 1.0
HANDOFF_MARGIN_SECONDS = 10.0  # beyond the function timeout: queueing, the reply, the checkpoint
log = get_logger(__name__)


class ShardedSource(Source):
    retries_in_place = True
    idle_poll_seconds: ClassVar[float] = 1.0  # how often an idle shard is read
    busy_poll_seconds: ClassVar[float] = 0.2  # the shortest gap between reads of a shard
    read_limit: ClassVar[int] = 10_000  # records per read

    def __init__(self, mapping: EventSourceMapping, context: SourceContext) -> None:
        super().__init__(mapping, context)
        self.replica_id = str(context.extras.get("replica_id") or f"{os.uname().nodename}-{uuid.uuid4().hex[:8]}")
        self.ownership: ShardOwnership | None = None  # from `start` on
        self._lease_task: asyncio.Task[None] | None = None
        metrics.declare_shards(mapping.uuid, mapping.source_kind)  # its counters at 0 from the start

    # -- what a subclass supplies ---------------------------------------------------------------------
    @abstractmethod
    async def list_shards(self) -> list[ShardInfo]: ...

    @abstractmethod
    async def open_iterator(self, shard_id: str, after: str | None, from_first_record: bool) -> str | None:
        """An iterator after sequence `after`, else at the start or the mapping's StartingPosition."""

    @abstractmethod
    async def fetch(self, iterator: str, limit: int) -> Fetched: ...

    @abstractmethod
    def sequence_of(self, raw: Any) -> str: ...

    @abstractmethod
    def partition_key_of(self, raw: Any) -> str: ...

    @abstractmethod
    def shape(self, raw: Any, position: Position) -> Record: ...

    @abstractmethod
    def shape_event(self, batch: Batch) -> dict[str, Any]: ...

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def lease_seconds(self) -> float:
        """The poller's own (tests), else HEADWATER_SHARD_LEASE_SECONDS, else the store's default."""
        configured = self.context.extras.get("shard_lease_seconds") or get_settings().shard_lease_seconds
        return float(configured) if configured else DEFAULT_LEASE_SECONDS

    @property
    def leases(self) -> ShardLeases | None:
        return self.ownership.leases if self.ownership is not None else None

    async def open_service(self) -> None:
        """Open the service's client (a subclass's); closed by `stop`, or at once if `start` fails."""

    async def close_service(self) -> None:
        """Close what `open_service` opened."""

    async def start(self) -> None:
        await self.open_service()
        try:
            await self._start_owning()
        except BaseException:
            await self.close_service()
            raise

    async def _start_owning(self) -> None:
        redis = self.context.extras.get("redis")
        if redis is None:
            raise SourceError("sharded sources keep their leases in Redis: the poller passed none")
        if self.mapping.tumbling_window_in_seconds and self.mapping.parallelization_factor > 1:
            log.warning("TumblingWindowInSeconds keeps one state per shard: ParallelizationFactor is not applied")
        handoff = self.context.function_timeout_seconds + HANDOFF_MARGIN_SECONDS
        leases = ShardLeases(
            redis,
            self.mapping.uuid,
            self.replica_id,
            lease_seconds=self.lease_seconds,
            handoff_seconds=handoff,
            function_name=self.mapping.function_name,
        )
        pace = ReadPace(self.idle_poll_seconds, self.busy_poll_seconds, self.read_limit)
        self.ownership = ShardOwnership(self.mapping, leases, self, pace)
        await self.ownership.discover()
        self._lease_task = asyncio.create_task(self.ownership.run(), name=f"shard-leases-{self.mapping.uuid}")

    async def stop(self) -> None:
        """Stop reading, checkpoint what settled, and let every lease go so others take over at once."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        try:
            if self.ownership is not None:
                await self.ownership.let_go()
        finally:
            await self.close_service()

    # -- what the poller asks -----------------------------------------------------------------------
    async def read_batch(self) -> Batch | None:
        ownership = self._ownership
        deadline = time.monotonic() + READ_WAIT_SECONDS
        while True:
            if self._lease_task is not None and self._lease_task.done():
                self._lease_task.result()  # the lease loop died: raise its error to the poller
            ownership.wake.clear()
            now = time.monotonic()
            for track in list(ownership.tracks.values()):
                batch = track.take_ready(now)
                if batch is not None:
                    ownership.rotate(track.shard_id)
                    return batch
            closes = [c for c in (t.next_deadline() for t in ownership.tracks.values()) if c is not None]
            wake_at = min([deadline, *closes])
            if now >= deadline:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ownership.wake.wait(), max(wake_at - now, 0.001))

    def event(self, batch: Batch) -> dict[str, Any]:
        track = self._track_of(batch)
        if track is not None:
            retry, bisect = track.invoking(batch)
            labels = (self.mapping.uuid, self.mapping.source_kind)
            if retry:
                metrics.STREAM_REDELIVERIES.labels(*labels, "retry").inc()
            if bisect:
                metrics.STREAM_REDELIVERIES.labels(*labels, "bisect").inc()
            if batch.records:  # a final batch (a window's closing invoke) reads nothing: the age stays
                track.age_seconds = max(time.time() - batch.records[-1].arrived_at, 0.0)
            self._ownership.publish_age()
        if track is None or track.windows is None:
            return self.shape_event(batch)
        return track.windows.event(batch, {"Records": []} if batch.final else self.shape_event(batch))

    async def settle(self, batch: Batch, failed: frozenset[str]) -> None:
        """Checkpoint past the whole batch (its failures were routed already), then free its lane."""
        track = self._track_of(batch)
        if track is None:
            log.info("shard was lost while its batch was out; not checkpointed here", lane=batch.lane)
            return
        track.settle(batch)
        ownership = self._ownership
        await ownership.write_checkpoint(track)
        ownership.wake.set()
        if track.draining or track.reading_done:
            ownership.rebalance.set()

    def accept_answer(self, batch: Batch, result: Result, failed: frozenset[str]) -> bool:
        """A windowed shard keeps the response's `state`; a response without one is a failure."""
        track = self._track_of(batch)
        if track is None or track.windows is None:
            return True
        return track.windows.answered(batch, result, failed)

    def owns(self, batch: Batch) -> bool:
        return self._track_of(batch) is not None

    def desired_concurrency(self, backlog_hint: int) -> int:
        """One batch per lane: shards held x ParallelizationFactor (Lambda's concurrent batches)."""
        tracks = self.ownership.tracks.values() if self.ownership is not None else ()
        return max(1, sum(track.lane_count for track in tracks))

    @property
    def shard_ids(self) -> list[str]:
        """The shards this replica reads now (draining ones included)."""
        tracks = self.ownership.tracks if self.ownership is not None else {}
        return sorted(shard_id for shard_id, track in tracks.items() if not track.lost)

    @property
    def _ownership(self) -> ShardOwnership:
        if self.ownership is None:
            raise SourceError("the sharded source was used before `start`")
        return self.ownership

    def _track_of(self, batch: Batch) -> ShardTrack | None:
        return self.ownership.track_of(batch) if self.ownership is not None else None
