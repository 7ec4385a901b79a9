"""One mapping's poller: concurrent batch loops that read, filter, invoke and settle.

Each loop repeats: `source.read_batch()` → FilterCriteria → `source.event(batch)` → the function
(through the invocation queue, trigger = the source kind) → the outcome → `source.settle`. How
an outcome becomes an acknowledgement depends on the source, never on its name:

- a queue source (`retries_in_place = False`, SQS) is settled at once with the records that
  failed (a function error fails them all; `ReportBatchItemFailures` names some; in an ordered
  lane every record after the first failure fails too, so nothing overtakes it). The source
  deletes the rest; the failed ones come back through the queue's own visibility and redrive.
- a log source (`retries_in_place = True`, Kafka, Kinesis) retries in place through
  `broker.stream_retry.deliver_in_place`, which routes what it gives up on to the on-failure
  destination; the batch is then settled as a whole.

Records the filters reject are never invoked; they are settled as done with their batch (SQS
deletes them, a log commits past them). A throttled invocation pauses the whole mapping's reads
with exponential backoff and halves its concurrency; a queue source retries the same batch in
place after the pause for up to one function timeout (its visibility is kept alive meanwhile),
then lets it go back to the queue, where the receive counts toward maxReceiveCount, as on Lambda.
A log source's retries (throttles included) are `stream_retry`'s.

No batch waits forever for its invocation (see `broker.sender`): when the invocation's job vanishes
without a reply, or the source's hold limit passes, a queue source is told to `release` the batch
(SQS makes it visible at once; the receive counts toward maxReceiveCount, as on Lambda) and a log
source retries it in place, in order. Records a source could not read are counted ("unreadable")
and shown as the mapping's LastProcessingResult.

Poison input stops only itself: records that cannot be read or invoked are set aside, counted and
reported (`broker.unreadable`), and the rest of their batch goes on.

A `final` batch (a tumbling window's closing invoke, no records of its own) is invoked as it is:
no filtering, no records counted, retried in place like any log batch.

`stop()` ends reading at once (a read in progress is abandoned: its records come back; SQS first
lets a receive already sent finish and hands back what it brought); batches already read finish
and settle. The caller cancels `run()` when its grace period is over, and a
batch cut off then is simply never acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from broker import batch_response, metrics, stream_retry
from broker.config import Function, HeadwaterOptions
from broker.destinations.base import Message
from broker.errors import BatchLostError, InvalidRequestContent, SourceError
from broker.filtering import FilterCriteria
from broker.invocation import Result, Status
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.mapping_state import ProcessingResult
from broker.scaling import Scaler
from broker.sender import Sender, encode_event
from broker.sources.base import Batch, Source
from broker.stopping import unless_stopped, wait_or_timeout
from broker.unreadable import ReportResult, UnreadableRecords

KEEP_ALIVE_EVERY_SECONDS = 0.5
SCALE_EVERY_SECONDS = 0.25
SOURCE_ERROR_BACKOFF_SECONDS = 2.0
log = get_logger(__name__)

SendOnFailure = Callable[[str, Message], Awaitable[None]]


class Poller:
    def __init__(
        self,
        mapping: EventSourceMapping,
        function: Function,
        source: Source,
        *,
        sender: Sender,
        send: SendOnFailure,
        options: HeadwaterOptions,
        report: ReportResult,
    ) -> None:
        self.mapping = mapping
        self.function = function
        self.source = source
        self._sender = sender
        self._send = send
        self._report = report
        self._filters = FilterCriteria([f.pattern for f in mapping.filter_criteria.filters])
        self._scaler = Scaler(options.throttle_backoff_initial_seconds, options.throttle_backoff_max_seconds)
        self._stopping = asyncio.Event()
        self._loops: dict[int, asyncio.Task[None]] = {}
        self._in_flight: list[Batch] = []
        self._desired = 1
        labels = (mapping.uuid, mapping.source_kind)
        stages = metrics.MAPPING_STAGES
        self._count = {stage: metrics.MAPPING_EVENTS.labels(*labels, stage) for stage in stages}
        self._batch_sizes = metrics.POLLER_BATCH_SIZE.labels(mapping.uuid)
        self._concurrent = metrics.POLLER_CONCURRENT_BATCHES.labels(mapping.uuid)
        self._last_poll = metrics.POLLER_LAST_POLL.labels(mapping.uuid)
        self._polls = {outcome: metrics.POLLER_POLLS.labels(*labels, outcome) for outcome in metrics.POLL_OUTCOMES}
        self._poll_duration = metrics.POLLER_POLL_DURATION.labels(*labels)
        self._unreadable = UnreadableRecords(mapping.uuid, self._count["unreadable"], report)

    def stop(self) -> None:
        """Stop reading; in-flight batches still finish. Calling it again changes nothing."""
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        """Poll until stopped and every batch read has settled."""
        async with asyncio.TaskGroup() as group:
            keeper = group.create_task(self._keep_alive())
            while not self._stopping.is_set():
                self._scale(group)
                await wait_or_timeout(self._stopping, SCALE_EVERY_SECONDS)
            await asyncio.gather(*self._loops.values())
            keeper.cancel()

    # -- scaling ------------------------------------------------------------------------------------
    def _scale(self, group: asyncio.TaskGroup) -> None:
        desired = self.source.desired_concurrency(self._scaler.hint)
        reserved = self.function.reserved_concurrent_executions
        if reserved is not None:
            desired = min(desired, reserved)
        self._desired = max(1, desired)
        self._scaler.limit_to(self._desired)
        for slot in range(self._desired):
            if slot not in self._loops:
                self._loops[slot] = group.create_task(self._batch_loop(slot))

    async def _batch_loop(self, slot: int) -> None:
        try:
            while not self._stopping.is_set() and slot < self._desired:
                pause = self._scaler.pause_seconds()
                if pause > 0:
                    await wait_or_timeout(self._stopping, pause)
                    continue
                batch = await self._read()
                if batch is not None:
                    await self._process(batch)
        finally:
            del self._loops[slot]

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(KEEP_ALIVE_EVERY_SECONDS)
            try:
                await self.source.keep_alive(list(self._in_flight))
            except SourceError as error:
                log.warning("could not keep batches alive; they may come back early", error=error.message)

    # -- one batch ------------------------------------------------------------------------------------
    async def _read(self) -> Batch | None:
        started = time.monotonic()
        try:
            batch = await unless_stopped(self.source.read_batch(), self._stopping)
        except SourceError as error:
            self._count_poll("error", started)
            log.warning("event source read failed; backing off", error=error.message)
            await wait_or_timeout(self._stopping, SOURCE_ERROR_BACKOFF_SECONDS)
            return None
        self._last_poll.set(time.time())
        await self._unreadable.report_skipped(self.source)
        if batch is None or not (batch.records or batch.final):
            if not self._stopping.is_set():  # a read abandoned by stop() is no poll
                self._count_poll("empty", started)
            self._scaler.read_was_empty()
            return None
        self._count_poll("records", started)
        self._count["polled"].inc(len(batch))
        log.debug("batch read", mapping=self.mapping.uuid, records=len(batch), lane=batch.lane)
        if len(batch) >= self.mapping.batch_size:
            self._scaler.batch_was_full()
        return batch

    def _count_poll(self, outcome: str, started: float) -> None:
        """One read of the source: `headwater_poller_polls_total` and its duration (long polls included)."""
        self._polls[outcome].inc()
        self._poll_duration.observe(time.monotonic() - started)

    async def _process(self, batch: Batch) -> None:
        self._in_flight.append(batch)
        self._concurrent.inc()
        try:
            work = self._matched(batch)
            if work is None:
                await self._settle(batch, frozenset())
                return
            if self.source.retries_in_place:
                await self._deliver_in_place(batch, work)
            else:
                await self._deliver_once(batch, work)
        finally:
            self._in_flight.remove(batch)
            self._concurrent.dec()

    def _matched(self, batch: Batch) -> Batch | None:
        """What FilterCriteria let through (None: nothing); a final batch has no records to filter."""
        if batch.final:
            return batch
        matched = tuple(record for record in batch.records if self._filters.matches(record.filter_view))
        if len(matched) < len(batch):
            self._count["filtered_out"].inc(len(batch) - len(matched))
        if not matched:
            return None
        self._batch_sizes.observe(len(matched))
        return batch.with_records(matched)

    async def _deliver_once(self, batch: Batch, work: Batch) -> None:
        unreadable: frozenset[str] = frozenset()
        while True:
            try:
                result = await self._invoke_through_throttles(work)
            except BatchLostError as error:
                log.warning("no outcome will come; the batch goes back to its source now", error=error.message)
                self._count["handed_back"].inc(len(batch))
                await self._release(batch)
                return
            except InvalidRequestContent as error:
                unreadable |= await self._unreadable.set_aside(work, error)
                rest = tuple(record for record in work.records if record.item_id not in unreadable)
                if rest:
                    work = work.with_records(rest)
                    continue
                await self._settle(batch, _in_lane_order(batch, unreadable))
                return
            break
        failed = batch_response.failed_items(
            result, work, self.mapping.reports_batch_item_failures, self.source.item_id_of
        )
        if failed and result.status is Status.SUCCESS:
            self._count["failed_invoke"].inc(len(failed))
        await self._settle(batch, _in_lane_order(batch, failed | unreadable))

    async def _invoke_through_throttles(self, work: Batch) -> Result:
        """A queue source retries a throttled batch in place, after the mapping's pause, for up to
        one function timeout (its records stay invisible meanwhile); then the batch fails and
        goes back to the queue, where the receive counts toward maxReceiveCount, as on Lambda."""
        deadline = time.monotonic() + self.function.timeout
        result = await self.invoke(work)
        while result.status is Status.THROTTLED and time.monotonic() < deadline:
            await wait_or_timeout(self._stopping, self._scaler.pause_seconds())
            if self._stopping.is_set():
                break
            result = await self.invoke(work)
        return result

    async def _deliver_in_place(self, batch: Batch, work: Batch) -> None:
        await stream_retry.deliver_in_place(
            self.source, self.mapping, work, self.invoke, self.send_on_failure, set_aside=self._unreadable.set_aside
        )
        await self._settle(batch, frozenset())

    async def invoke(self, work: Batch) -> Result:
        """One invocation, counted. A throttle halves the mapping's concurrency and pauses its
        reads (exponential backoff); the caller decides when to retry the batch itself.
        `InvalidRequestContent` when the batch's event cannot be built or encoded: nothing ran."""
        payload = encode_event(self._event(work))
        self._count["invoked"].inc(len(work))
        result = await self._sender.invoke(
            self.function.function_name, payload, self.mapping.source_kind, give_up_at=self.source.hold_deadline(work)
        )
        if result.status is Status.THROTTLED:
            self._count["failed_invoke"].inc(len(work))
            pause = self._scaler.throttled()
            log.info("function throttled; mapping backs off", mapping=self.mapping.uuid, pause=f"{pause:.3f}")
            return result
        self._scaler.invoked()
        if result.status is Status.FUNCTION_ERROR:
            self._count["failed_invoke"].inc(len(work))
            if not self.mapping.reports_batch_item_failures:
                self._scaler.function_failed()
        ok = result.status is Status.SUCCESS
        await self._report(ProcessingResult.OK if ok else ProcessingResult.PROBLEM)
        return result

    def _event(self, work: Batch) -> dict[str, Any]:
        """The source's event for `work`; whatever its shape raises on input it did not foresee
        becomes `InvalidRequestContent`, so that input is set aside instead of crashing the loop."""
        try:
            return self.source.event(work)
        except Exception as error:
            raise InvalidRequestContent(
                f"the source could not shape the event: {type(error).__name__}: {error}"
            ) from error

    async def send_on_failure(self, message: Message) -> None:
        """Deliver an on-failure message to the mapping's DestinationConfig.OnFailure; raises
        DestinationError when it cannot be written. Without a destination there is nothing to do."""
        target = self.mapping.on_failure_destination
        if target is not None:
            await self._send(target, message)

    async def _release(self, batch: Batch) -> None:
        try:
            await self.source.release(batch)
        except SourceError as error:
            log.warning("could not hand a batch back; its records return after their timeout", error=error.message)

    async def _settle(self, batch: Batch, failed: frozenset[str]) -> None:
        log.debug("settling batch", mapping=self.mapping.uuid, records=len(batch), failed=len(failed))
        try:
            await self.source.settle(batch, failed)
        except SourceError as error:
            log.warning("could not acknowledge a batch; its records will come back", error=error.message)


def _in_lane_order(batch: Batch, failed: frozenset[str]) -> frozenset[str]:
    """In an ordered lane nothing may be acknowledged after a failure, or it would overtake it."""
    if batch.lane is None or not failed:
        return failed
    ids = [record.item_id for record in batch.records]
    first = min(ids.index(item) for item in failed if item in ids)
    return frozenset(ids[first:]) | failed
