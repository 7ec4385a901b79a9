"""Which shards one replica reads: the lease loop, what a balance changes, fenced checkpoints.

How it keeps its part of the acknowledgement contract:

- Only shards whose lease this replica holds are read. The lease loop balances every third of a
  lease (and at once when a shard ended or was let go); each new lease starts a reader, each lost
  one is fenced at once: its reader stops and `track_of` no longer finds it, so the source does
  not own its batches any more (`stream_retry` stops retrying them, `settle` writes nothing).
- A checkpoint is written with the lease's fencing token (`ShardLeases.checkpoint`): a replica
  whose lease was taken can never move it, and a refused write is the proof that marks the shard
  lost here. A checkpoint that cannot be written while Redis is away is left to a later one.
- A shard another replica asked for is drained before it is handed over: reading stops, the
  buffered records are dropped (the successor reads them again from the checkpoint), the batches
  out settle and checkpoint, and only then is the lease released to the asker, so two replicas
  never run a shard's records at the same time. A batch still being retried has what of it is
  done checkpointed on each round.
- A closed shard read to its end is checkpointed at SHARD_END once every record of it settled,
  which lets its children start (a child never starts before its parents end).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from broker import metrics
from broker.backoff import Backoff
from broker.errors import SourceError, StoreUnavailable
from broker.logs import get_logger
from broker.shard_leases import Balance, OwnedShard, ShardLeases
from broker.sources.base import Batch
from broker.sources.shards.reader import ERROR_BACKOFF_SECONDS, ReadPace, ShardReader
from broker.sources.shards.service import ShardService
from broker.sources.shards.track import Position, ShardTrack
from broker.sources.shards.windows import ShardWindows

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping

DISCOVER_EVERY_SECONDS = 10.0
log = get_logger(__name__)


class ShardOwnership:
    """The shards of one mapping this replica holds, their tracks and readers, kept in line with Redis."""

    def __init__(
        self,
        mapping: EventSourceMapping,
        leases: ShardLeases,
        service: ShardService,
        pace: ReadPace,
    ) -> None:
        self.mapping = mapping
        self.leases = leases
        self.service = service
        self.pace = pace
        self.tracks: dict[str, ShardTrack] = {}
        self.wake = asyncio.Event()  # records added or a lane freed: `read_batch` looks again
        self.rebalance = asyncio.Event()  # a shard ended or was let go: balance now
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._discovered_at = 0.0
        self._asked: dict[str, str] = {}  # shard id -> the replica that asked for it (latest balance)
        labels = (mapping.uuid, mapping.source_kind)
        self._leases_held = metrics.declare_shards(*labels)  # idempotent: the source declared them at 0 already
        self._iterator_age = metrics.ITERATOR_AGE.labels(mapping.function_name, mapping.uuid)

    # -- what the source asks ---------------------------------------------------------------------
    def track_of(self, batch: Batch) -> ShardTrack | None:
        """The track a batch was read under, while this replica still holds that very lease. Placed
        by `batch.span`: a window's final batch has no records, but the ones it concludes place it."""
        if not batch.span:
            return None
        handle = batch.span[0].handle
        assert isinstance(handle, Position)
        track = self.tracks.get(handle.shard_id)
        if track is None or track.lost or track.token != handle.token:
            return None
        return track

    def rotate(self, shard_id: str) -> None:
        """Move a shard that just gave a batch to the back, so no shard starves the others."""
        self.tracks[shard_id] = self.tracks.pop(shard_id)

    def publish_age(self) -> None:
        self._iterator_age.set(max((t.age_seconds for t in self.tracks.values()), default=0.0))

    async def write_checkpoint(self, track: ShardTrack, *, ended: bool = False) -> bool:
        """Write the track's progress (fenced); False when nothing could be written."""
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

    # -- the lease loop -------------------------------------------------------------------------
    async def discover(self) -> None:
        """List the source's shards and register them, so every replica balances over them."""
        shards = await self.service.list_shards()
        try:
            added = await self.leases.register(shards)
        except StoreUnavailable as error:
            raise SourceError(f"cannot register shards: {error.message}") from error
        self._discovered_at = time.monotonic()
        if added:
            log.info("shards discovered", mapping=self.mapping.uuid, new=added, total=len(shards))

    async def run(self) -> None:
        """Balance every third of a lease (or when asked) until cancelled; Redis errors keep what is held."""
        store_errors = Backoff(*ERROR_BACKOFF_SECONDS)
        while True:
            self.rebalance.clear()
            try:
                if time.monotonic() - self._discovered_at >= DISCOVER_EVERY_SECONDS:
                    await self.discover()
                await self._finish_shards()
                ages = {s: int(t.age_seconds * 1000) for s, t in self.tracks.items() if not t.lost}
                balance = await self.leases.balance(ages)
                store_errors.reset()
            except (StoreUnavailable, SourceError) as error:
                log.warning("shard leases not balanced; keeping what is held", error=error.message)
                await asyncio.sleep(min(store_errors.next(), self.leases.renew_every_seconds))
                continue
            await self._apply(balance)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rebalance.wait(), self.leases.renew_every_seconds)

    async def let_go(self) -> None:
        """Stop every reader, checkpoint what settled, and release every lease so others take over at once."""
        for shard_id in list(self.tracks):
            await self._stop_reader(shard_id)
        try:
            for track in list(self.tracks.values()):
                if not track.lost:
                    await self.write_checkpoint(track)
                    await self.leases.release(track.shard)
            await self.leases.balance({}, leaving=True)
        except StoreUnavailable as error:
            log.warning("could not let shard leases go; they lapse on their own", error=error.message)
        self.tracks.clear()
        self._leases_held.set(0)

    async def _apply(self, balance: Balance) -> None:
        if balance.graced:
            log.info("Redis was away: every shard lease got a grace period", leases=balance.graced)
        for shard_id, track in list(self.tracks.items()):
            held = balance.owned.get(shard_id)
            if held is None or held.token != track.token:
                self._fence(track, "another replica holds its lease")
                await self._forget(shard_id)
        for shard_id, held in balance.owned.items():
            if shard_id not in self.tracks:
                self._start_reader(held, balance.takes.get(shard_id, "handoff"))
        self._asked = balance.handoffs
        for shard_id, successor in balance.handoffs.items():
            asked = self.tracks.get(shard_id)
            if asked is not None and not asked.draining:
                log.info("handing a shard over to a replica below its share", shard=shard_id, to=successor)
                asked.draining = True
                await self._stop_reader(shard_id)
                asked.drop_buffers()
        self._leases_held.set(len(self.tracks))

    async def _finish_shards(self) -> None:
        """Let go of shards that ended (SHARD_END) or that another replica asked for, once settled."""
        for shard_id, track in list(self.tracks.items()):
            if track.lost:
                continue
            if track.in_flight:  # a batch being retried: checkpoint what of it is done already
                await self.write_checkpoint(track)
                continue
            if track.finished:
                if await self.write_checkpoint(track, ended=True):
                    log.info("shard finished: checkpointed at its end", shard=shard_id)
                    await self._forget(shard_id)
            elif track.draining and await self.write_checkpoint(track):
                await self.leases.release(track.shard, self._asked.get(shard_id, ""))
                await self._forget(shard_id)

    # -- readers ------------------------------------------------------------------------------------
    def _start_reader(self, held: OwnedShard, how: str) -> None:
        mapping = self.mapping
        length = mapping.tumbling_window_in_seconds
        windows = ShardWindows(length, held.shard_id, mapping.event_source_arn or "") if length else None
        lanes = 1 if windows else mapping.parallelization_factor  # a window's state is per shard: one batch at a time
        track = ShardTrack(held, lanes, mapping.batch_size, mapping.maximum_batching_window_in_seconds, windows=windows)
        reader = ShardReader(
            self.service,
            track,
            self.pace,
            on_records=self.wake.set,
            on_caught_up=self.publish_age,
            on_end=self.rebalance.set,
        )
        self.tracks[held.shard_id] = track
        self._readers[held.shard_id] = asyncio.create_task(reader.run(), name=f"shard-{held.shard_id}")
        metrics.LEASE_TAKES.labels(mapping.uuid, mapping.source_kind, how).inc()
        log.info("shard lease taken", shard=held.shard_id, how=how, checkpoint=held.checkpoint)

    async def _stop_reader(self, shard_id: str) -> None:
        reader = self._readers.pop(shard_id, None)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _forget(self, shard_id: str) -> None:
        await self._stop_reader(shard_id)
        self.tracks.pop(shard_id, None)
        self.publish_age()
        self._leases_held.set(len(self.tracks))

    def _fence(self, track: ShardTrack, why: str) -> None:
        if not track.lost:
            track.lost = True
            metrics.LEASES_FENCED.labels(self.mapping.uuid, self.mapping.source_kind).inc()
            log.warning("shard lease lost to another replica; no longer invoking it", shard=track.shard_id, why=why)
            self.rebalance.set()
