"""A running sharded stream mapping (Kinesis, DynamoDB Streams): leases, one reader per shard, checkpoints.

How it keeps the acknowledgement contract written on `Source`:

- The checkpoint (a sequence number, kept with the shard's lease in Redis) moves only once records
  reached their final outcome: in `settle`, and, while a batch is still being retried, over the
  part of it that is done already (see `track`). It is written with the lease's fencing token, so
  a replica whose lease was taken can never move it; a refused write marks the shard lost here.
- A poller that dies leaves the checkpoint where it was: the next owner reads again after it, so
  the batch that was out runs again (duplicates are possible, loss is not).
- Only shards whose lease this replica holds are read; the lease loop (`balance` every third of a
  lease) starts a reader for each new one and stops the readers of lost ones at once (`owns`
  turns false, so `stream_retry` stops retrying their batches). A shard another replica asked for
  is drained first: reading stops, its batches out settle and checkpoint, then the lease is
  handed over, so two replicas never run a shard's records at the same time.
- A closed shard is read to its end; once every record of it settled its checkpoint is written as
  SHARD_END, which makes its children eligible (a child never starts before its parents end).

A subclass supplies the service's calls (`list_shards`, `open_iterator`, `fetch`) and its shapes
(`shape`, `event`, `failure_record_info`); the rest is the same for every sharded stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from broker import metrics
from broker.backoff import Backoff
from broker.errors import SourceError, StoreUnavailable
from broker.logs import get_logger
from broker.shard_leases import DEFAULT_LEASE_SECONDS, Balance, OwnedShard, ShardInfo, ShardLeases
from broker.sources.base import Batch, Record, Source, SourceContext
from broker.sources.shards.track import Position, ShardTrack

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping

READ_WAIT_SECONDS = 1.0
DISCOVER_EVERY_SECONDS = 10.0
HANDOFF_MARGIN_SECONDS = 10.0  # beyond the function timeout: queueing, the reply, the checkpoint
THROTTLE_BACKOFF_SECONDS = (0.5, 10.0)
ERROR_BACKOFF_SECONDS = (1.0, 30.0)
BUFFERED_BATCHES = 2  # per lane: how far a reader reads ahead of the batches sent
LEASE_SECONDS_ENVIRONMENT = "HEADWATER_SHARD_LEASE_SECONDS"
log = get_logger(__name__)


class ThrottledError(SourceError):
    """The service refused a read for its rate limits; the shard's reader backs off."""


class IteratorExpiredError(SourceError):
    """The shard iterator is too old; the reader asks for a new one after the last record read."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One read of a shard: raw records in order, the next iterator (None: the shard ended)."""

    records: list[Any]
    next_iterator: str | None
    behind_ms: int | None = None


class ShardedSource(Source):
    retries_in_place = True
    idle_poll_seconds: ClassVar[float] = 1.0  # how often an idle shard is read
    busy_poll_seconds: ClassVar[float] = 0.2  # the shortest gap between reads of a shard
    read_limit: ClassVar[int] = 10_000  # records per read

    def __init__(self, mapping: EventSourceMapping, context: SourceContext) -> None:
        super().__init__(mapping, context)
        self.replica_id = str(context.extras.get("replica_id") or f"{os.uname().nodename}-{uuid.uuid4().hex[:8]}")
        self.leases: ShardLeases | None = None
        self._tracks: dict[str, ShardTrack] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._lease_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # records added or a lane freed: read_batch looks again
        self._rebalance = asyncio.Event()  # a shard ended or was let go: balance now
        self._discovered_at = 0.0
        self._asked: dict[str, str] = {}  # shard id -> the replica that asked for it (latest balance)
        labels = (mapping.uuid, mapping.source_kind)
        self._leases_held = metrics.POLLER_LEASES.labels(*labels)
        self._iterator_age = metrics.ITERATOR_AGE.labels(mapping.function_name, mapping.uuid)

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
        configured = self.context.extras.get("shard_lease_seconds") or os.environ.get(LEASE_SECONDS_ENVIRONMENT)
        return float(configured) if configured else DEFAULT_LEASE_SECONDS

    async def start(self) -> None:
        redis = self.context.extras.get("redis")
        if redis is None:
            raise SourceError("sharded sources keep their leases in Redis: the poller passed none")
        handoff = self.context.function_timeout_seconds + HANDOFF_MARGIN_SECONDS
        self.leases = ShardLeases(
            redis, self.mapping.uuid, self.replica_id, lease_seconds=self.lease_seconds, handoff_seconds=handoff
        )
        await self._discover()
        self._lease_task = asyncio.create_task(self._lease_loop(), name=f"shard-leases-{self.mapping.uuid}")

    async def stop(self) -> None:
        """Stop reading, checkpoint what settled, and let every lease go so others take over at once."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        for shard_id in list(self._tracks):
            await self._stop_reader(shard_id)
        leases = self.leases
        if leases is None:
            return
        try:
            for track in list(self._tracks.values()):
                if not track.lost:
                    await self._write_checkpoint(track)
                    await leases.release(track.shard)
            await leases.balance({}, leaving=True)
        except StoreUnavailable as error:
            log.warning("could not let shard leases go; they lapse on their own", error=error.message)
        self._tracks.clear()
        self._leases_held.set(0)

    # -- reading ------------------------------------------------------------------------------------
    async def read_batch(self) -> Batch | None:
        deadline = time.monotonic() + READ_WAIT_SECONDS
        while True:
            if self._lease_task is not None and self._lease_task.done():
                self._lease_task.result()  # the lease loop died: raise its error to the poller
            self._wake.clear()
            now = time.monotonic()
            for track in list(self._tracks.values()):
                batch = track.take_ready(now)
                if batch is not None:
                    self._rotate(track.shard_id)
                    return batch
            closes = [c for c in (t.next_deadline() for t in self._tracks.values()) if c is not None]
            wake_at = min([deadline, *closes])
            if now >= deadline:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wake_at - now, 0.001))

    def _rotate(self, shard_id: str) -> None:
        """Move a shard that just gave a batch to the back, so no shard starves the others."""
        self._tracks[shard_id] = self._tracks.pop(shard_id)

    async def _read_shard(self, track: ShardTrack) -> None:
        """One shard's reader: GetRecords at once while records come, about once a second when idle."""
        throttles = Backoff(*THROTTLE_BACKOFF_SECONDS)
        errors = Backoff(*ERROR_BACKOFF_SECONDS)
        iterator: str | None = None
        opened = False
        while not (track.draining or track.lost):
            if track.buffered >= BUFFERED_BATCHES * track.batch_size * track.lane_count:
                await asyncio.sleep(self.busy_poll_seconds)
                continue
            try:
                if not opened:
                    iterator = await self.open_iterator(track.shard_id, track.last_read, track.shard.from_first_record)
                    opened = True
                if iterator is None:
                    break
                fetched = await self.fetch(iterator, self.read_limit)
            except ThrottledError as error:
                log.info("shard read throttled; backing off", shard=track.shard_id, error=error.message)
                await asyncio.sleep(throttles.next())
                continue
            except IteratorExpiredError:
                opened = False
                continue
            except SourceError as error:
                log.warning("shard read failed; retrying", shard=track.shard_id, error=error.message)
                opened = False
                await asyncio.sleep(errors.next())
                continue
            throttles.reset()
            errors.reset()
            iterator = fetched.next_iterator
            self._take_in(track, fetched)
            if iterator is None:
                break
            await asyncio.sleep(self.busy_poll_seconds if fetched.records else self.idle_poll_seconds)
        if iterator is None and opened:
            track.reading_done = True
            self._rebalance.set()

    def _take_in(self, track: ShardTrack, fetched: Fetched) -> None:
        now = time.monotonic()
        for raw in fetched.records:
            record = self.shape(raw, track.position(self.sequence_of(raw)))
            track.add(record, self.partition_key_of(raw), now)
        if fetched.records:
            self._wake.set()
        elif not track.buffered and not track.in_flight:
            track.age_seconds = 0.0  # caught up: nothing waits in this shard
            self._publish_age()

    # -- what the poller asks -----------------------------------------------------------------------
    def event(self, batch: Batch) -> dict[str, Any]:
        track = self._track_of(batch)
        if track is not None:
            retry, bisect = track.invoking(batch)
            labels = (self.mapping.uuid, self.mapping.source_kind)
            if retry:
                metrics.STREAM_REDELIVERIES.labels(*labels, "retry").inc()
            if bisect:
                metrics.STREAM_REDELIVERIES.labels(*labels, "bisect").inc()
            track.age_seconds = max(time.time() - batch.records[-1].arrived_at, 0.0)
            self._publish_age()
        return self.shape_event(batch)

    async def settle(self, batch: Batch, failed: frozenset[str]) -> None:
        """Checkpoint past the whole batch (its failures were routed already), then free its lane."""
        track = self._track_of(batch)
        if track is None:
            log.info("shard was lost while its batch was out; not checkpointed here", lane=batch.lane)
            return
        track.settle(batch)
        await self._write_checkpoint(track)
        self._wake.set()
        if track.draining or track.reading_done:
            self._rebalance.set()

    def owns(self, batch: Batch) -> bool:
        return self._track_of(batch) is not None

    def desired_concurrency(self, backlog_hint: int) -> int:
        """One batch per lane: shards held x ParallelizationFactor (Lambda's concurrent batches)."""
        return max(1, sum(track.lane_count for track in self._tracks.values()))

    @property
    def shard_ids(self) -> list[str]:
        """The shards this replica reads now (draining ones included)."""
        return sorted(shard_id for shard_id, track in self._tracks.items() if not track.lost)

    def _track_of(self, batch: Batch) -> ShardTrack | None:
        if not batch.records:
            return None
        handle = batch.records[0].handle
        assert isinstance(handle, Position)
        track = self._tracks.get(handle.shard_id)
        if track is None or track.lost or track.token != handle.token:
            return None
        return track

    def _publish_age(self) -> None:
        self._iterator_age.set(max((t.age_seconds for t in self._tracks.values()), default=0.0))

    # -- checkpoints --------------------------------------------------------------------------------
    async def _write_checkpoint(self, track: ShardTrack, *, ended: bool = False) -> bool:
        """Write the track's progress (fenced); False when nothing could be written."""
        assert self.leases is not None
        async with track.write_lock:
            sequence = track.progress
            if track.lost or (sequence == track.checkpointed and not ended):
                return not track.lost
            try:
                applied = await self.leases.checkpoint(track.shard, sequence or "", ended=ended)
            except StoreUnavailable as error:
                log.warning("checkpoint not written; a later one covers it", shard=track.shard_id, error=error.message)
                return False
            if not applied:
                self._fence(track, "its checkpoint was refused")
                return False
            track.checkpointed = sequence
            return True

    def _fence(self, track: ShardTrack, why: str) -> None:
        if not track.lost:
            track.lost = True
            metrics.LEASES_FENCED.labels(self.mapping.uuid, self.mapping.source_kind).inc()
            log.warning("shard lease lost to another replica; no longer invoking it", shard=track.shard_id, why=why)
            self._rebalance.set()

    # -- leases -------------------------------------------------------------------------------------
    async def _discover(self) -> None:
        assert self.leases is not None
        shards = await self.list_shards()
        try:
            added = await self.leases.register(shards)
        except StoreUnavailable as error:
            raise SourceError(f"cannot register shards: {error.message}") from error
        self._discovered_at = time.monotonic()
        if added:
            log.info("shards discovered", mapping=self.mapping.uuid, new=added, total=len(shards))

    async def _lease_loop(self) -> None:
        assert self.leases is not None
        store_errors = Backoff(*ERROR_BACKOFF_SECONDS)
        while True:
            self._rebalance.clear()
            try:
                if time.monotonic() - self._discovered_at >= DISCOVER_EVERY_SECONDS:
                    await self._discover()
                await self._finish_shards()
                ages = {s: int(t.age_seconds * 1000) for s, t in self._tracks.items() if not t.lost}
                balance = await self.leases.balance(ages)
                store_errors.reset()
            except (StoreUnavailable, SourceError) as error:
                log.warning("shard leases not balanced; keeping what is held", error=error.message)
                await asyncio.sleep(min(store_errors.next(), self.leases.renew_every_seconds))
                continue
            await self._apply(balance)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rebalance.wait(), self.leases.renew_every_seconds)

    async def _apply(self, balance: Balance) -> None:
        if balance.graced:
            log.info("Redis was away: every shard lease got a grace period", leases=balance.graced)
        for shard_id, track in list(self._tracks.items()):
            held = balance.owned.get(shard_id)
            if held is None or held.token != track.token:
                self._fence(track, "another replica holds its lease")
                await self._forget(shard_id)
        for shard_id, held in balance.owned.items():
            if shard_id not in self._tracks:
                self._start_reader(held, balance.takes.get(shard_id, "handoff"))
        self._asked = balance.handoffs
        for shard_id, successor in balance.handoffs.items():
            asked = self._tracks.get(shard_id)
            if asked is not None and not asked.draining:
                log.info("handing a shard over to a replica below its share", shard=shard_id, to=successor)
                asked.draining = True
                await self._stop_reader(shard_id)
                asked.drop_buffers()
        self._leases_held.set(len(self._tracks))

    def _start_reader(self, held: OwnedShard, how: str) -> None:
        mapping = self.mapping
        track = ShardTrack(
            held, mapping.parallelization_factor, mapping.batch_size, mapping.maximum_batching_window_in_seconds
        )
        self._tracks[held.shard_id] = track
        self._readers[held.shard_id] = asyncio.create_task(self._read_shard(track), name=f"shard-{held.shard_id}")
        metrics.LEASE_TAKES.labels(mapping.uuid, mapping.source_kind, how).inc()
        log.info("shard lease taken", shard=held.shard_id, how=how, checkpoint=held.checkpoint)

    async def _finish_shards(self) -> None:
        """Let go of shards that ended (SHARD_END) or that another replica asked for, once settled."""
        assert self.leases is not None
        for shard_id, track in list(self._tracks.items()):
            if track.lost:
                continue
            if track.in_flight:  # a batch being retried: checkpoint what of it is done already
                await self._write_checkpoint(track)
                continue
            if track.finished:
                if await self._write_checkpoint(track, ended=True):
                    log.info("shard finished: checkpointed at its end", shard=shard_id)
                    await self._forget(shard_id)
            elif track.draining and await self._write_checkpoint(track):
                await self.leases.release(track.shard, self._asked.get(shard_id, ""))
                await self._forget(shard_id)

    async def _stop_reader(self, shard_id: str) -> None:
        reader = self._readers.pop(shard_id, None)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _forget(self, shard_id: str) -> None:
        await self._stop_reader(shard_id)
        self._tracks.pop(shard_id, None)
        self._publish_age()
        self._leases_held.set(len(self._tracks))
