"""The running side of a Kafka mapping: one aiokafka consumer in the mapping's consumer group.

How it keeps the acknowledgement contract written on `Source`:

- Offsets move only in `settle` (auto-commit is off), to the batch's last offset + 1, once the
  batch's outcome is final (success, or its failures routed by `stream_retry`). A poller that dies
  before leaves the offset where it was, and the records come again: at-least-once. The partition
  goes on with its next batch while the commit is made; the commits of all partitions share one
  request (`commits`), and `settle` returns once it was made.
- Each partition is a lane, which lets out its next batch only once the one out (waiting in the
  invocation queue, or retried) is settled, so batches of one partition run one at a time, in offset
  order; meanwhile the lane buffers what comes next, up to one batch (then the partition is paused).
  A background task calls `getmany` without pause, for the partitions not paused; that is
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
from broker.sources.base import Batch, FailurePart, Record, Source, SourceContext, runtime
from broker.sources.kafka import client, offsets, shape
from broker.sources.kafka.client import FETCH_WAIT_MS
from broker.sources.kafka.commits import Committer, Note
from broker.sources.kafka.kind import KafkaKind
from broker.sources.kafka.lanes import Lanes, position_of

READ_WAIT_SECONDS = 1.0
LAG_REFRESH_SECONDS = 5.0
COMMIT_ATTEMPTS = 5
RETRY_BACKOFF_SECONDS = 0.5
DRAIN_MARGIN_SECONDS = 10.0  # beyond the function timeout: queueing, the reply, the commit
LOOPS_PER_PARTITION = 3  # one invoking, two waiting for commits (see `desired_concurrency`)
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
        self._lanes = Lanes(mapping.batch_size, mapping.maximum_batching_window_in_seconds, self._shape)
        self._filtered = bool(mapping.filter_criteria.filters)
        self._partitions: dict[str, TopicPartition] = {}
        self._committed: dict[str, int] = {}
        self._commits = Committer(self._commit)
        self._fetcher: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lane_freed = asyncio.Event()  # set by every settle: a draining revoke looks again
        self._lag_due = 0.0
        self._lags: dict[str, int] = {}  # OffsetLag of each partition owned, summed into the mapping's gauge

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
        self._committer = asyncio.create_task(self._commits.run(), name=f"kafka-commit-{self.mapping.uuid}")

    async def stop(self) -> None:
        """Leave the group at once (partitions move to the other replicas); nothing unsettled is committed."""
        for task in (self._fetcher, self._committer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.consumer is not None:
            await self.consumer.stop()
        for name in list(self._partitions):
            self._forget_lag(name)

    # -- reading ------------------------------------------------------------------------------------
    async def read_batch(self) -> Batch | None:
        deadline = time.monotonic() + READ_WAIT_SECONDS
        while True:
            for task in (self._fetcher, self._committer):
                if task is not None and task.done():
                    task.result()  # a task of the source died: raise its error to the poller
            self._wake.clear()
            now = time.monotonic()
            batch = self._lanes.take_ready(now)
            if batch is not None:
                self._sync_pauses()
                # Once this batch is on its way, shape the partition's next one while it is out.
                asyncio.get_running_loop().call_soon(self._lanes.shape_ahead, batch.lane or "")
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
        """Buffer what was fetched as it came; it is shaped when its batch is taken (see `lanes`)."""
        now = time.monotonic()
        add, size_of = self._lanes.add, shape.size_of
        for partition, messages in fetched.items():
            name = shape.lane_name(partition.topic, partition.partition)
            self._partitions[name] = partition
            # aiokafka returns records of current assignments only: a lane not yet owned is one
            # whose assignment callback has not run yet.
            if self._lanes.epoch(name) is None:
                self._lanes.assign(name)
            for message in messages:
                add(name, message, size_of(message), now)
        self._sync_pauses()
        if fetched:
            self._wake.set()

    def _shape(self, message: Any, epoch: int) -> Record | None:
        """A fetched record in Lambda's shape; None (logged, reported unreadable) when it cannot be."""
        try:
            return shape.record(message, epoch, self._filtered)
        except Exception as error:  # logged with its traceback; the record is skipped
            name = shape.item_id(message.topic, message.partition, message.offset)
            log.exception("Kafka record cannot be shaped; skipping it", record=name)
            self.unreadable.append(f"{name}: {type(error).__name__}: {error}")
            return None

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
        """Commit past the whole batch (its failures were routed already): its partition is free for
        its next batch at once, and this returns once the commit was made (see `commits`)."""
        name = batch.lane or ""
        committing = None
        if self._lanes.owns(batch):
            first, last = position_of(batch, 0), position_of(batch, -1)
            committing = self._commits.note(name, last.offset + 1, first.offset, first.epoch)
        else:
            log.info("partition was revoked while its batch was out; not committed here", partition=name)
        self._lanes.settle(batch)
        self._sync_pauses()
        self._wake.set()
        self._lane_freed.set()
        if committing is not None:
            await asyncio.shield(committing)

    async def _commit(self, notes: dict[str, Note]) -> None:
        """One commit request for every partition noted and still owned under the same assignment."""
        owned = {name: note for name, note in notes.items() if self._lanes.epoch(name) == note.epoch}
        offsets = {self._partitions[name]: note.offset for name, note in owned.items()}
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as error:
                log.warning(
                    "commit refused: the partitions moved to another consumer", partitions=list(owned), error=str(error)
                )
                return
            except KafkaError as error:
                if not error.retriable or attempt == COMMIT_ATTEMPTS:
                    # The next batch's commit covers this one; a crash before it only repeats records.
                    log.warning("commit failed", partitions=list(owned), error=str(error))
                    return
                await asyncio.sleep(RETRY_BACKOFF_SECONDS * attempt)
            else:
                for name, note in owned.items():
                    advance = note.offset - self._committed.get(name, note.since)
                    self._committed[name] = note.offset
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
        await self._commits.flush(names)  # what settled is committed before the partitions go
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
            if (name := shape.lane_name(partition.topic, partition.partition)) in owned:
                self._lags[name] = lag
        self._publish_lag()

    def _forget_lag(self, name: str) -> None:
        self._lags.pop(name, None)
        self._publish_lag()

    def _publish_lag(self) -> None:
        """The mapping's OffsetLag: the sum over the partitions it owns here; no series while it owns none."""
        labels = (self.mapping.function_name, self.mapping.uuid)
        if self._lags:
            metrics.KAFKA_OFFSET_LAG.labels(*labels).set(sum(self._lags.values()))
        else:
            with contextlib.suppress(KeyError):
                metrics.KAFKA_OFFSET_LAG.remove(*labels)

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
        """Batch loops per assigned partition: besides the one invoking the partition's batch, loops
        whose batches wait for their commit (`settle` returns once it is made, and a commit can take
        longer than an invocation). The lanes still let one batch of a partition be invoked at a time
        (Lambda: at most one consumer per partition)."""
        return max(1, LOOPS_PER_PARTITION * len(self._lanes.owned()))

    def owns(self, batch: Batch) -> bool:
        return self._lanes.owns(batch)

    @property
    def draining(self) -> list[str]:
        """Partitions revoked by the group whose batches in flight are being waited for."""
        return self._lanes.draining()

    def item_id_of(self, identifier: Any) -> str | None:
        return shape.item_id_of(identifier)
