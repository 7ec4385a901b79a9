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

`stop()` ends reading at once (a read in progress is abandoned: its records come back); batches
already read finish and settle. The caller cancels `run()` when its grace period is over, and a
batch cut off then is simply never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from broker import batch_response, metrics, stream_retry
from broker.config import Function, Settings
from broker.destinations.base import Message
from broker.errors import BatchLostError, SourceError
from broker.filtering import FilterCriteria
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.mapping_state import ProcessingResult
from broker.model import Result, Status
from broker.scaling import Scaler
from broker.sender import Sender
from broker.sources.base import Batch, Source

KEEP_ALIVE_EVERY_SECONDS = 0.5
SCALE_EVERY_SECONDS = 0.25
SOURCE_ERROR_BACKOFF_SECONDS = 2.0
log = get_logger(__name__)

SendOnFailure = Callable[[str, Message], Awaitable[None]]
ReportResult = Callable[[ProcessingResult], Awaitable[None]]


class Poller:
    def __init__(
        self,
        mapping: EventSourceMapping,
        function: Function,
        source: Source,
        *,
        sender: Sender,
        send: SendOnFailure,
        settings: Settings,
        report: ReportResult,
    ) -> None:
        self.mapping = mapping
        self.function = function
        self.source = source
        self._sender = sender
        self._send = send
        self._report = report
        self._filters = FilterCriteria([f.pattern for f in mapping.filter_criteria.filters])
        self._scaler = Scaler(settings.throttle_backoff_initial_seconds, settings.throttle_backoff_max_seconds)
        self._stopping = asyncio.Event()
        self._loops: dict[int, asyncio.Task[None]] = {}
        self._in_flight: list[Batch] = []
        self._desired = 1
        labels = (mapping.uuid, mapping.source_kind)
        stages = metrics.ESM_STAGES
        self._count = {stage: metrics.ESM_EVENTS.labels(*labels, stage) for stage in stages}
        self._batch_sizes = metrics.POLLER_BATCH_SIZE.labels(mapping.uuid)
        self._concurrent = metrics.POLLER_CONCURRENT_BATCHES.labels(mapping.uuid)
        self._last_poll = metrics.POLLER_LAST_POLL.labels(mapping.uuid)

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
        try:
            batch = await _unless_stopped(self.source.read_batch(), self._stopping)
        except SourceError as error:
            log.warning("event source read failed; backing off", error=error.message)
            await wait_or_timeout(self._stopping, SOURCE_ERROR_BACKOFF_SECONDS)
            return None
        self._last_poll.set(time.time())
        await self._report_unreadable()
        if not batch:
            self._scaler.read_was_empty()
            return None
        self._count["polled"].inc(len(batch))
        log.debug("batch read", mapping=self.mapping.uuid, records=len(batch), lane=batch.lane)
        if len(batch) >= self.mapping.batch_size:
            self._scaler.batch_was_full()
        return batch

    async def _report_unreadable(self) -> None:
        """Records the source skipped unread: counted, logged, and shown as the mapping's last result."""
        if not self.source.unreadable:
            return
        reasons, self.source.unreadable[:] = list(self.source.unreadable), []
        self._count["unreadable"].inc(len(reasons))
        log.error("records could not be read and were skipped", mapping=self.mapping.uuid, reasons=reasons)
        await self._report(ProcessingResult.UNREADABLE_RECORD)

    async def _process(self, batch: Batch) -> None:
        self._in_flight.append(batch)
        self._concurrent.inc()
        try:
            matched = tuple(record for record in batch.records if self._filters.matches(record.filter_view))
            if len(matched) < len(batch):
                self._count["filtered_out"].inc(len(batch) - len(matched))
            if not matched:
                await self._settle(batch, frozenset())
                return
            work = Batch(matched, batch.lane)
            self._batch_sizes.observe(len(work))
            if self.source.retries_in_place:
                await self._deliver_in_place(batch, work)
            else:
                await self._deliver_once(batch, work)
        finally:
            self._in_flight.remove(batch)
            self._concurrent.dec()

    async def _deliver_once(self, batch: Batch, work: Batch) -> None:
        try:
            result = await self._invoke_through_throttles(work)
        except BatchLostError as error:
            log.warning("no outcome will come; the batch goes back to its source now", error=error.message)
            self._count["handed_back"].inc(len(batch))
            await self._release(batch)
            return
        failed = batch_response.failed_items(
            result, work, self.mapping.reports_batch_item_failures, self.source.item_id_of
        )
        if failed and result.status is Status.SUCCESS:
            self._count["failed_invoke"].inc(len(failed))
        await self._settle(batch, _in_lane_order(batch, failed))

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
        await stream_retry.deliver_in_place(self.source, self.mapping, work, self.invoke, self.send_on_failure)
        await self._settle(batch, frozenset())

    async def invoke(self, work: Batch) -> Result:
        """One invocation, counted. A throttle halves the mapping's concurrency and pauses its
        reads (exponential backoff); the caller decides when to retry the batch itself."""
        self._count["invoked"].inc(len(work))
        event = self.source.event(work)
        result = await self._sender.invoke(
            self.function.function_name, event, self.mapping.source_kind, give_up_at=self.source.hold_deadline(work)
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

    async def send_on_failure(self, record: dict[str, Any]) -> None:
        """Deliver an on-failure record to the mapping's DestinationConfig.OnFailure; raises
        DestinationError when it cannot be written. Without a destination there is nothing to do."""
        target = self.mapping.on_failure_destination
        if target is not None:
            await self._send(target, Message(body=json.dumps(record)))

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


async def wait_or_timeout(event: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when `event` is set first (a stop must not wait out a backoff)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def _unless_stopped(read: Awaitable[Batch | None], stopping: asyncio.Event) -> Batch | None:
    """Await a read unless `stopping` is set first; an abandoned read is cancelled (its records,
    never settled, come back from the source)."""
    reading = asyncio.ensure_future(read)
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({reading, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not reading.done():
            reading.cancel()
            await asyncio.wait({reading})  # let the source unwind and keep what it had received
    return None if reading.cancelled() else reading.result()
