"""The running side of a Kafka mapping: one aiokafka consumer in the mapping's consumer group.

How it keeps the acknowledgement contract written on `Source`:

- Offsets move only in `settle` (auto-commit is off), to the batch's last offset + 1, once the
  batch's outcome is final (success, or its failures routed by `stream_retry`). A poller that dies
  before leaves the offset where it was, and the records come again: at-least-once.
- Each partition is a lane. It is paused while its batch waits in the invocation queue or is
  retried, and resumed only after the commit, so batches of one partition run one at a time, in
  offset order. A background task calls `getmany` without pause, for the other partitions; that is
  also what keeps aiokafka from leaving the group when a batch outlives `max_poll_interval_ms`
  (aiokafka measures the time since the consumer last fetched, not since the last commit).
- Poller replicas share partitions through Kafka's group protocol (group id: ConsumerGroupId, else
  the mapping's stable UUID). When the group takes partitions away, aiokafka awaits
  `partitions_revoked` before this consumer rejoins, and the group waits for it: the revoked
  partitions stop yielding batches at once, their batches in flight are awaited (at most
  `drain_seconds`: the function timeout plus `DRAIN_MARGIN_SECONDS`) and committed, and only then
  are the partitions let go. So the next owner starts after the last committed batch, and never
  runs the same offsets at the same time or out of order. `rebalance_timeout_ms` is raised to cover
  that wait, or the group would move on without us. A batch still out when the wait ends (its job
  sat behind a backlog) is never committed here: the next owner re-reads it from the committed
  offset (a duplicate run, as after a crash). If the partition comes back while that old batch is
  still out, it stays paused until the batch is settled.
- StartingPosition applies only to partitions without a committed offset. What LATEST or
  AT_TIMESTAMP resolves to is committed at once, so a rebalance before the first batch keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from broker import metrics
from broker.destinations.kafka import KafkaTopic
from broker.errors import SourceError
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.sources.base import Batch, FailurePart, Source, SourceContext, runtime
from broker.sources.kafka import client, offsets, shape
from broker.sources.kafka.client import FETCH_WAIT_MS
from broker.sources.kafka.kind import KafkaKind
from broker.sources.kafka.lanes import Lanes, Position

READ_WAIT_SECONDS = 1.0
LAG_REFRESH_SECONDS = 5.0
COMMIT_ATTEMPTS = 5
RETRY_BACKOFF_SECONDS = 0.5
DRAIN_MARGIN_SECONDS = 10.0  # beyond the function timeout: queueing, the reply, the commit
log = get_logger(__name__)


@runtime(KafkaKind)
class KafkaSource(Source):
    retries_in_place = True
    retry_cap_with_on_failure = 10

    def __init__(self, mapping: EventSourceMapping, context: SourceContext) -> None:
        super().__init__(mapping, context)
        self.topic = (mapping.topics or [""])[0]
        self.group_id = mapping.self_managed_kafka_event_source_config.consumer_group_id or mapping.uuid
        arn = mapping.event_source_arn
        self.cluster_arn = arn if arn and ":kafka:" in arn else None
        self.consumer: Any = None
        self._lanes = Lanes(mapping.batch_size, mapping.maximum_batching_window_in_seconds)
        self._partitions: dict[str, TopicPartition] = {}
        self._committed: dict[str, int] = {}
        self._fetcher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lane_freed = asyncio.Event()  # set by every settle: a draining revoke looks again
        self._lag_due = 0.0

    @property
    def drain_seconds(self) -> float:
        """The longest a revoke waits for the revoked partitions' batches in flight (the source
        context's `kafka_drain_seconds` extra, when given, replaces the default)."""
        override = self.context.extras.get("kafka_drain_seconds")
        if override is not None:
            return float(override)
        return self.context.function_timeout_seconds + DRAIN_MARGIN_SECONDS

    @property
    def bootstrap_servers(self) -> str:
        return client.bootstrap_servers(self.mapping, self.cluster_arn)

    # -- lifecycle ----------------------------------------------------------------------------------
    async def build_consumer(self) -> Any:
        """The consumer, with the mapping's security settings; not yet started."""
        return await client.build_consumer(
            self.mapping, self.context, self.bootstrap_servers, self.group_id, self.drain_seconds
        )

    async def start(self) -> None:
        self.consumer = await self.build_consumer()
        self.consumer.subscribe([self.topic], listener=client.RebalanceListener(self))
        try:
            await self.consumer.start()
        except KafkaError as error:
            await self.consumer.stop()  # the poller retries start() with a fresh consumer
            raise SourceError(f"Kafka {self.bootstrap_servers}: {error}") from error
        self._fetcher = asyncio.create_task(self._fetch_forever(), name=f"kafka-fetch-{self.mapping.uuid}")

    async def stop(self) -> None:
        """Leave the group at once (partitions move to the other replicas); nothing unsettled is committed."""
        if self._fetcher is not None:
            self._fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetcher
        if self.consumer is not None:
            await self.consumer.stop()
        for name in list(self._partitions):
            self._forget_lag(name)

    # -- reading ------------------------------------------------------------------------------------
    async def read_batch(self) -> Batch | None:
        deadline = time.monotonic() + READ_WAIT_SECONDS
        while True:
            if self._fetcher is not None and self._fetcher.done():
                self._fetcher.result()  # the fetch task died: raise its error to the poller
            self._wake.clear()
            now = time.monotonic()
            batch = self._lanes.take_ready(now)
            if batch is not None:
                self._sync_pauses()
                return batch
            closes = self._lanes.next_deadline()
            wake_at = deadline if closes is None else min(deadline, closes)
            if now >= deadline:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wake_at - now, 0.001))

    async def _fetch_forever(self) -> None:
        """Fetch for every partition that is not paused, all the time (see the module docstring)."""
        while True:
            try:
                fetched = await self.consumer.getmany(timeout_ms=FETCH_WAIT_MS)
            except KafkaError as error:
                log.warning("Kafka fetch failed; retrying", mapping=self.mapping.uuid, error=str(error))
                await asyncio.sleep(RETRY_BACKOFF_SECONDS)
                continue
            except UnicodeDecodeError:  # aiokafka names no record: find it, one record at a time
                reason = await client.step_over_undecodable(self.consumer, self._take_in)
                if reason is not None:
                    self.unreadable.append(reason)
                continue
            self._take_in(fetched)
            if time.monotonic() >= self._lag_due:
                self._lag_due = time.monotonic() + LAG_REFRESH_SECONDS
                await self._refresh_lag()

    def _take_in(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        now = time.monotonic()
        filtered = bool(self.mapping.filter_criteria.filters)
        for partition, messages in fetched.items():
            name = shape.lane_name(partition.topic, partition.partition)
            self._partitions[name] = partition
            # aiokafka returns records of current assignments only: a lane not yet owned is one
            # whose assignment callback has not run yet.
            epoch = self._lanes.epoch(name) or self._lanes.assign(name)
            for message in messages:
                try:
                    record = shape.record(message, epoch, filtered)
                except Exception as error:  # logged with its traceback; the record is skipped
                    log.exception("Kafka record cannot be shaped; skipping it", partition=name, offset=message.offset)
                    self.unreadable.append(
                        f"{shape.item_id(partition.topic, partition.partition, message.offset)}: "
                        f"{type(error).__name__}: {error}"
                    )
                    continue
                self._lanes.add(name, record, now)
        self._sync_pauses()
        if fetched:
            self._wake.set()

    def _sync_pauses(self) -> None:
        """Pause exactly the partitions with a batch out or a full buffer; resume the others."""
        if self.consumer is None:
            return
        paused = self.consumer.paused()
        for partition in self.consumer.assignment():
            pause = self._lanes.should_pause(shape.lane_name(partition.topic, partition.partition))
            if pause and partition not in paused:
                self.consumer.pause(partition)
            elif not pause and partition in paused:
                self.consumer.resume(partition)

    # -- settling -----------------------------------------------------------------------------------
    async def settle(self, batch: Batch, failed: frozenset[str]) -> None:
        """Commit past the whole batch (its failures were routed already), then resume its partition."""
        name = batch.lane or ""
        if self._lanes.owns(batch):
            await self._commit(name, _offset(batch, -1) + 1, _offset(batch, 0))
        else:
            log.info("partition was revoked while its batch was out; not committed here", partition=name)
        self._lanes.settle(batch)
        self._sync_pauses()
        self._wake.set()
        self._lane_freed.set()

    async def _commit(self, name: str, offset: int, first_offset: int) -> None:
        partition = self._partitions[name]
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                await self.consumer.commit({partition: offset})
            except (CommitFailedError, IllegalStateError) as error:
                log.warning(
                    "commit refused: the partition moved to another consumer",
                    partition=name,
                    error=str(error),
                )
                return
            except KafkaError as error:
                if not error.retriable or attempt == COMMIT_ATTEMPTS:
                    # The next batch's commit covers this one; a crash before it only repeats records.
                    log.warning("commit failed", partition=name, offset=offset, error=str(error))
                    return
                await asyncio.sleep(RETRY_BACKOFF_SECONDS * attempt)
            else:
                advance = offset - self._committed.get(name, first_offset)
                self._committed[name] = offset
                metrics.MAPPING_EVENTS.labels(self.mapping.uuid, "kafka", "committed").inc(max(advance, 0))
                return

    # -- rebalances ---------------------------------------------------------------------------------
    async def partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Stop taking from the partitions, let their batches in flight finish and commit (bounded
        by `drain_seconds`), then let them go; the group waits for this before reassigning them."""
        names = [shape.lane_name(partition.topic, partition.partition) for partition in revoked]
        for name in names:
            self._lanes.drain(name)
        self._sync_pauses()
        await self._drain(names)
        for name in names:
            if self._lanes.in_flight(name):
                log.warning("partition let go with a batch still out; the next owner reads it again", partition=name)
            self._lanes.revoke(name)
            self._committed.pop(name, None)
            self._forget_lag(name)

    async def _drain(self, names: list[str]) -> None:
        deadline = time.monotonic() + self.drain_seconds
        while True:
            self._lane_freed.clear()  # before looking, so a settle in between is not missed
            busy = [name for name in names if self._lanes.in_flight(name)]
            if not busy or time.monotonic() >= deadline:
                return
            log.info("partitions revoked; waiting for their batches in flight", partitions=busy)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lane_freed.wait(), deadline - time.monotonic())

    async def partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        metrics.KAFKA_REBALANCES.labels(self.mapping.uuid).inc()
        partitions = sorted(assigned)
        for partition in partitions:
            name = shape.lane_name(partition.topic, partition.partition)
            self._partitions[name] = partition
            self._lanes.assign(name)
        self._sync_pauses()  # a partition whose old batch is still out stays paused
        for partition in partitions:
            await self._position(partition)
        await self._refresh_lag()
        log.info("partitions assigned", mapping=self.mapping.uuid, partitions=[p.partition for p in partitions])

    async def _position(self, partition: TopicPartition) -> None:
        """Keep the group's committed offset; without one, start at StartingPosition and commit it."""
        name = shape.lane_name(partition.topic, partition.partition)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                await self._resolve_position(name, partition)
            except KafkaError as error:
                log.warning("could not resolve the starting offset; retrying", partition=name, error=str(error))
                await asyncio.sleep(RETRY_BACKOFF_SECONDS * attempt)
            else:
                return
        log.error("starting offset unresolved: reading from the oldest record", partition=name)

    async def _resolve_position(self, name: str, partition: TopicPartition) -> None:
        committed = await self.consumer.committed(partition)
        if committed is not None:
            self._committed[name] = committed
            return
        offset = await offsets.starting_offset(self.consumer, self.mapping, partition)
        if offset is None:  # TRIM_HORIZON: the consumer already starts at the oldest record
            return
        self.consumer.seek(partition, offset)
        self._lanes.restart(name)  # drop what was read from the oldest record meanwhile
        await self.consumer.commit({partition: offset})
        self._committed[name] = offset

    # -- lag ----------------------------------------------------------------------------------------
    async def _refresh_lag(self) -> None:
        try:
            lags = await offsets.lags(self.consumer, self._committed)
        except KafkaError as error:
            log.warning("could not read end offsets for the lag", mapping=self.mapping.uuid, error=str(error))
            return
        owned = set(self._lanes.owned())  # a rebalance may have happened while the broker answered
        for partition, lag in lags.items():
            if shape.lane_name(partition.topic, partition.partition) in owned:
                metrics.KAFKA_OFFSET_LAG.labels(self.mapping.uuid, str(partition.partition)).set(lag)

    def _forget_lag(self, name: str) -> None:
        partition = self._partitions.get(name)
        if partition is not None:
            with contextlib.suppress(KeyError):
                metrics.KAFKA_OFFSET_LAG.remove(self.mapping.uuid, str(partition.partition))

    # -- what the poller asks -----------------------------------------------------------------------
    def event(self, batch: Batch) -> dict[str, Any]:
        return shape.event(batch, self.bootstrap_servers, self.cluster_arn)

    def failure_record_info(self, batch: Batch) -> dict[str, Any]:
        return shape.batch_info(batch, self.bootstrap_servers, self.cluster_arn)

    def failure_record_parts(self, batch: Batch, target: str) -> list[FailurePart] | None:
        """To a Kafka topic Lambda writes one message per failed record, keyed with the record's key;
        every other target gets the batch-level record."""
        if not KafkaTopic.matches(target):
            return None
        return shape.record_failures(batch, self.bootstrap_servers, self.cluster_arn)

    def desired_concurrency(self, backlog_hint: int) -> int:
        """One batch per assigned partition (Lambda: at most one consumer per partition)."""
        return max(1, len(self._lanes.owned()))

    def owns(self, batch: Batch) -> bool:
        return self._lanes.owns(batch)

    @property
    def draining(self) -> list[str]:
        """Partitions revoked by the group whose batches in flight are being waited for."""
        return self._lanes.draining()

    def item_id_of(self, identifier: Any) -> str | None:
        return shape.item_id_of(identifier)


def _offset(batch: Batch, index: int) -> int:
    handle = batch.records[index].handle
    assert isinstance(handle, Position)
    return handle.offset
