"""A running SQS mapping: gather batches, keep them invisible while they run, settle them.

Reading long-polls (10 messages a call, every attribute) until the batch is full
(BatchSize), its window closes (MaximumBatchingWindowInSeconds, counted from the batch's first
message), or the next message would take the event past Lambda's 6 MB; that message starts the
next batch. A FIFO queue is split per MessageGroupId: SQS hands out nothing more of a group while
some of it is in flight, and this source never returns a group that has a batch in flight, so
each group is processed in order while groups run side by side.

A long poll waits about as long as the queue has been quiet: 1 s right after a message, growing
to SQS's 20 s (Lambda's wait) after 20 quiet seconds, counted from the source's start until a
message comes. A quiet mapping costs about as many requests as Lambda's, and a stop, which lets the
receive in flight finish and hands back what it brought at once, rarely waits long (see `client`).

Every message received is *held* until settled (see `holding`): kept invisible while it waits or
runs, so a batch waiting behind a backlog never reappears and runs twice. Settling deletes the done
messages; failed ones reappear when Lambda's would, VisibilityTimeout after their receive, and the
queue's RedrivePolicy moves them to its dead-letter queue after maxReceiveCount receives. Lambda
itself sets no visibility; it never queues a batch behind others.

A message is held at most about 12 hours (SQS's own limit) and its batch's `hold_deadline` is
that moment: the poller then gives up waiting for the invocation and
`release`s the batch. A batch whose invocation will never answer (its job vanished) is released
at once too: every message becomes visible again immediately (ChangeMessageVisibility 0), the
next receive counts toward maxReceiveCount, and the RedrivePolicy applies as usual.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from broker import filtering, metrics
from broker.errors import ConfigError, SourceError
from broker.logs import get_logger
from broker.payload import REQUEST_RESPONSE_LIMIT_BYTES
from broker.sources.base import Batch, Record, Source, SourceContext, runtime
from broker.sources.sqs.client import QueueClient
from broker.sources.sqs.holding import Holding
from broker.sources.sqs.kind import QUEUE_ARN, SqsKind
from broker.sources.sqs.shape import lambda_record

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping

RECEIVE_WAIT_SECONDS = 20
SHORTEST_WAIT_SECONDS = 1
RECEIVE_MAX_MESSAGES = 10
LANE_BUSY_WAIT_SECONDS = 1
DEFAULT_MAXIMUM_CONCURRENCY = 20  # Lambda allows 1250 per mapping; one process serves far fewer
ENVELOPE_BYTES = len(json.dumps({"Records": []}))
SEPARATOR_BYTES = len(", ")
log = get_logger(__name__)


class Collector:
    """The batch being gathered: at most BatchSize records, and an event within 6 MB."""

    def __init__(self, batch_size: int) -> None:
        self.records: list[Record] = []
        self._batch_size = batch_size
        self._bytes = ENVELOPE_BYTES

    @property
    def room(self) -> int:
        return self._batch_size - len(self.records)

    def take(self, record: Record) -> bool:
        added = record.size_bytes + (SEPARATOR_BYTES if self.records else 0)
        if not self.room or (self.records and self._bytes + added > REQUEST_RESPONSE_LIMIT_BYTES):
            return False
        self.records.append(record)
        self._bytes += added
        return True


@runtime(SqsKind)
class SqsSource(Source):
    user_action_reason = "USER_INITIATED"
    reports_processing_result = False

    def __init__(self, mapping: EventSourceMapping, context: SourceContext) -> None:
        super().__init__(mapping, context)
        match = QUEUE_ARN.match(mapping.event_source_arn or "")
        assert match is not None, "SqsKind.rules accepted only queue ARNs"
        self._queue = QueueClient(match[0], match["region"])
        self._name, self._account = match["name"], match["account"]
        self._fifo = self._name.endswith(".fifo")
        self._holding = Holding(self._queue)
        self._waiting: deque[Record] = deque()  # received, in no batch yet: carried over, or other groups
        self._busy_lanes: set[str] = set()
        self._receiving = asyncio.Lock()
        self._last_message_at = time.monotonic()  # the start, then each message: sets the long polls' wait
        self._deleted = metrics.MAPPING_EVENTS.labels(mapping.uuid, SqsKind.name, "deleted")
        self._oldest_age = metrics.SQS_OLDEST_MESSAGE_AGE.labels(mapping.uuid)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Find the queue; refuse, as Lambda does, a function timeout above its visibility timeout."""
        owner = f"EventSourceMapping {self.mapping.uuid}"
        await self._queue.connect(self.context.aws_session, self._name, self._account, owner)
        visibility_timeout = self._holding.visibility_timeout = await self._queue.visibility_timeout()
        timeout = self.context.function_timeout_seconds
        if timeout > visibility_timeout:
            raise ConfigError(
                [
                    f"Invalid parameter value: Queue visibility timeout: {visibility_timeout} seconds "
                    f"is less than Function timeout: {timeout} seconds"
                ],
                owner,
            )

    async def stop(self) -> None:
        """Hand back what was received but never batched; what the receives cut off by the stop bring
        is handed back once they come back (up to a long poll later), as lingering clean-up: the
        mapping is Disabled (or restarted) meanwhile, and the process waits for it before it exits.
        Batches in flight are left to come back."""
        waiting = self._holding.let_go(record.item_id for record in self._waiting)
        self._waiting.clear()
        handles = [held.receipt_handle for held in waiting]
        cut_off = self._queue.take_abandoned()
        if cut_off:
            self.context.lingering(self._hand_back(handles, cut_off))
        else:
            await self._hand_back(handles, cut_off)

    async def _hand_back(self, handles: list[str], cut_off: list[asyncio.Future[dict[str, Any]]]) -> None:
        try:
            handles += self._unheld(await self._queue.abandoned_messages(cut_off))
            await self._queue.change_visibility([(handle, 0) for handle in handles])
        except SourceError as error:
            log.warning("unbatched messages not handed back; they return after their timeout", error=str(error))
        except asyncio.CancelledError:
            log.warning("grace period over: a receive in flight is left; what it brings returns after its timeout")
            raise
        finally:
            await self._queue.close()

    def _unheld(self, messages: list[dict[str, Any]]) -> list[str]:
        """Receipt handles of what the receives cut off by the stop brought, except messages held
        here (a batch in flight settles those with the newest handle)."""
        handles = [message["ReceiptHandle"] for message in messages if not self._holding.renew_handle(message)]
        if handles:
            log.info("handing back messages a receive brought after the stop", count=len(handles))
        return handles

    # -- reading ----------------------------------------------------------------------------------
    async def read_batch(self) -> Batch | None:
        if self._fifo:
            return await self._read_group()
        collector = Collector(self.mapping.batch_size)
        try:
            await self._collect(collector)
        except BaseException:  # cancelled or failed mid-window: keep what was received for the next read
            self._waiting.extendleft(reversed(collector.records))
            raise
        return Batch(tuple(collector.records)) if collector.records else None

    async def _collect(self, collector: Collector) -> None:
        while self._waiting and collector.take(self._waiting[0]):
            self._waiting.popleft()
        if self._waiting:
            return
        window = self.mapping.maximum_batching_window_in_seconds
        closes = time.monotonic() + window if collector.records else None
        while collector.room:
            remaining = None if closes is None else closes - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            wait = self._long_poll_seconds() if remaining is None else _window_wait_seconds(remaining)
            received = await self._receive(min(RECEIVE_MAX_MESSAGES, collector.room), wait)
            if not received and closes is None:
                return
            closes = closes if closes is not None else time.monotonic() + window
            for index, record in enumerate(received):
                if not collector.take(record):
                    self._waiting.extend(received[index:])
                    return

    async def _read_group(self) -> Batch | None:
        """One batch of one message group that has none in flight, in the group's order.

        While a group is in flight the poll is short, so its next messages follow soon after it
        settles (a long poll that began while the group was blocked may not see them; moto's doesn't).
        """
        if self._ready_lane() is None:
            async with self._receiving:  # decide under the lock: a lane may have settled while queued
                if self._ready_lane() is None:
                    wait = LANE_BUSY_WAIT_SECONDS if self._busy_lanes else self._long_poll_seconds()
                    received = await self._receive(self.mapping.batch_size, wait)
                    self._waiting.extend(received)  # the deque is never replaced, only changed in place
        lane = self._ready_lane()
        if lane is None:
            return None
        collector = Collector(self.mapping.batch_size)
        for record in [record for record in self._waiting if record.lane == lane]:
            if not collector.take(record):
                break
            self._waiting.remove(record)
        self._busy_lanes.add(lane)
        return Batch(tuple(collector.records), lane)

    def _ready_lane(self) -> str | None:
        return next((record.lane for record in self._waiting if record.lane not in self._busy_lanes), None)

    async def _receive(self, count: int, wait_seconds: int) -> list[Record]:
        """Receive and hold messages. One already held here (SQS delivers at least once, and a
        lapsed visibility hands a message out again) is not returned a second time: it is still in
        flight, and only its receipt handle and visibility are renewed."""
        messages = await self._queue.receive(count, wait_seconds, self._holding.hold_seconds)
        received_at = time.monotonic()
        if messages:
            self._last_message_at = received_at
        fresh = [record for message in messages if (record := self._hold(message, received_at)) is not None]
        self._oldest_age.set(max((time.time() - record.arrived_at for record in fresh), default=0.0))
        return fresh

    def _hold(self, message: dict[str, Any], received_at: float) -> Record | None:
        if not self._holding.hold(message, received_at):
            log.info("message received again while in flight here; not run twice", message_id=message["MessageId"])
            return None
        return self._record(message)

    def _record(self, message: dict[str, Any]) -> Record:
        event = lambda_record(message, self._queue.arn, self._queue.region)
        attributes = event["attributes"]
        return Record(
            item_id=event["messageId"],
            lane=attributes.get("MessageGroupId") if self._fifo else None,
            event=event,
            size_bytes=len(json.dumps(event)),
            arrived_at=int(attributes.get("SentTimestamp", "0")) / 1000,
            filter_view={**event, "body": filtering.decode_or_text(event["body"])},
            handle=event["receiptHandle"],
        )

    def event(self, batch: Batch) -> dict[str, Any]:
        return {"Records": [record.event for record in batch.records]}

    def desired_concurrency(self, backlog_hint: int) -> int:
        """The poller's estimate plus the message groups waiting here, up to MaximumConcurrency."""
        ceiling = self.mapping.scaling_config.maximum_concurrency or DEFAULT_MAXIMUM_CONCURRENCY
        ready = {record.lane for record in self._waiting if record.lane not in self._busy_lanes}
        return min(ceiling, backlog_hint + len(ready))

    # -- visibility and acknowledgement ------------------------------------------------------------
    async def keep_alive(self, batches: list[Batch]) -> None:
        """Extend every held message (in flight or waiting) whose visibility lapses soon (`holding`)."""
        await self._holding.keep_alive()

    def hold_deadline(self, batch: Batch) -> float | None:
        """About 12 hours after the receive of the batch's oldest message (`holding.MAXIMUM_HOLD_SECONDS`)."""
        return self._holding.deadline(record.item_id for record in batch.records)

    async def release(self, batch: Batch) -> None:
        """Make the batch's messages (and, in a FIFO group, the later ones already received)
        visible at once: its invocation will never answer, so they are not held any longer."""
        returning = list(batch.records)
        if batch.lane is not None:
            self._busy_lanes.discard(batch.lane)
            later = [record for record in self._waiting if record.lane == batch.lane]
            for record in later:
                self._waiting.remove(record)
            returning += later
        held = self._holding.let_go(record.item_id for record in returning)
        await self._queue.change_visibility([(item.receipt_handle, 0) for item in held])

    async def settle(self, batch: Batch, failed: frozenset[str]) -> None:
        """Delete the done records; let the failed ones (and, in a FIFO group that failed, every
        later message of the group already received) reappear when Lambda's would."""
        back = [record for record in batch.records if record.item_id in failed]
        if batch.lane is not None:
            self._busy_lanes.discard(batch.lane)
            if back:
                later = [record for record in self._waiting if record.lane == batch.lane]
                for record in later:
                    self._waiting.remove(record)
                back += later
        done = self._holding.let_go(record.item_id for record in batch.records if record.item_id not in failed)
        returning = self._holding.let_go(record.item_id for record in back)
        self._deleted.inc(await self._queue.delete([held.receipt_handle for held in done]))
        await self._holding.give_back(returning)

    def _long_poll_seconds(self) -> int:
        """As long as the queue has been quiet, from SHORTEST_WAIT_SECONDS to SQS's 20 s."""
        quiet = time.monotonic() - self._last_message_at
        return min(RECEIVE_WAIT_SECONDS, max(SHORTEST_WAIT_SECONDS, math.ceil(quiet)))


def _window_wait_seconds(window_remaining: float) -> int:
    """Within a batching window, long-poll until it closes."""
    return min(RECEIVE_WAIT_SECONDS, math.ceil(window_remaining))
