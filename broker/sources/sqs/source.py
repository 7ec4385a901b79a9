"""A running SQS mapping: gather batches, keep them invisible while they run, settle them.

Reading long-polls (up to 20 s, 10 messages a call, every attribute) until the batch is full
(BatchSize), its window closes (MaximumBatchingWindowInSeconds, counted from the batch's first
message), or the next message would take the event past Lambda's 6 MB; that message starts the
next batch. A FIFO queue is split per MessageGroupId: SQS hands out nothing more of a group while
some of it is in flight, and this source never returns a group that has a batch in flight, so
each group is processed in order while groups run side by side.

Every message received is *held* until settled: received invisible for VisibilityTimeout (at least
5 s), and `keep_alive` extends held messages before that lapses, so a batch waiting behind a
backlog never reappears and runs twice. Settling deletes the done messages; failed ones reappear
when Lambda's would, VisibilityTimeout after their receive (shortened back if we held them longer,
floor 0), and the queue's RedrivePolicy moves them to its dead-letter queue after maxReceiveCount
receives. Lambda itself sets no visibility; it never queues a batch behind others.

The hold has a cap: SQS refuses to keep a message invisible longer than 12 hours after its
receive, so a message is held at most `MAXIMUM_HOLD_SECONDS` (12 hours less a margin) and its
batch's `hold_deadline` is that moment: the poller then gives up waiting for the invocation and
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker import filtering, metrics
from broker.errors import ConfigError, SourceError
from broker.logs import get_logger
from broker.payload import REQUEST_RESPONSE_LIMIT_BYTES
from broker.sources.base import Batch, Record, Source, SourceContext, runtime
from broker.sources.sqs.client import QueueClient
from broker.sources.sqs.kind import QUEUE_ARN, SqsKind
from broker.sources.sqs.shape import lambda_record

if TYPE_CHECKING:
    from broker.mapping import EventSourceMapping

RECEIVE_WAIT_SECONDS = 20
RECEIVE_MAX_MESSAGES = 10
LANE_BUSY_WAIT_SECONDS = 1
DEFAULT_MAXIMUM_CONCURRENCY = 20  # Lambda allows 1250 per mapping; one process serves far fewer
EXTEND_MARGIN_SECONDS = 1.5  # the poller calls keep_alive every 0.5 s
# Messages are received, and extended, invisible for at least this long: with a tiny
# VisibilityTimeout a slow receive or one late keep-alive tick would otherwise let a batch that is
# still running reappear. Failed messages are shortened back to VisibilityTimeout after their
# receive; the one price is that after a poller crash its messages return within this time.
MINIMUM_HOLD_SECONDS = 5
SQS_VISIBILITY_LIMIT_SECONDS = 12 * 3600  # SQS: at most 12 hours invisible after a receive
MAXIMUM_HOLD_SECONDS = SQS_VISIBILITY_LIMIT_SECONDS - 60  # the last extension must still be accepted
ENVELOPE_BYTES = len(json.dumps({"Records": []}))
SEPARATOR_BYTES = len(", ")
log = get_logger(__name__)


@dataclass(slots=True)
class Held:
    """A message received and not settled yet, and until when SQS keeps it invisible."""

    receipt_handle: str  # the latest: SQS deletes a message received twice only by its newest handle
    received_at: float  # monotonic
    visible_at: float  # monotonic; moved forward by keep_alive


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
        self._visibility_timeout = 30
        self._held: dict[str, Held] = {}  # by messageId
        self._waiting: deque[Record] = deque()  # received, in no batch yet: carried over, or other groups
        self._busy_lanes: set[str] = set()
        self._receiving = asyncio.Lock()
        self._deleted = metrics.ESM_EVENTS.labels(mapping.uuid, SqsKind.name, "deleted")
        self._oldest_age = metrics.SQS_OLDEST_MESSAGE_AGE.labels(mapping.uuid)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Find the queue; refuse, as Lambda does, a function timeout above its visibility timeout."""
        owner = f"EventSourceMapping {self.mapping.uuid}"
        await self._queue.connect(self.context.aws_session, self._name, self._account, owner)
        self._visibility_timeout = await self._queue.visibility_timeout()
        timeout = self.context.function_timeout_seconds
        if timeout > self._visibility_timeout:
            raise ConfigError(
                [
                    f"Invalid parameter value: Queue visibility timeout: {self._visibility_timeout} seconds "
                    f"is less than Function timeout: {timeout} seconds"
                ],
                owner,
            )

    async def stop(self) -> None:
        """Hand back what was received but never batched; batches in flight are left to come back."""
        waiting = [self._held.pop(record.item_id, None) for record in self._waiting]
        self._waiting.clear()
        try:
            await self._queue.change_visibility([(held.receipt_handle, 0) for held in waiting if held is not None])
        except SourceError as error:
            log.warning("unbatched messages not handed back; they return after their timeout", error=str(error))
        finally:
            await self._queue.close()

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
            wait = _wait_seconds(remaining)
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
                    wait = LANE_BUSY_WAIT_SECONDS if self._busy_lanes else RECEIVE_WAIT_SECONDS
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
        messages = await self._queue.receive(count, wait_seconds, self._hold_seconds)
        received_at = time.monotonic()
        fresh = [record for message in messages if (record := self._hold(message, received_at)) is not None]
        self._oldest_age.set(max((time.time() - record.arrived_at for record in fresh), default=0.0))
        return fresh

    def _hold(self, message: dict[str, Any], received_at: float) -> Record | None:
        visible_at = received_at + self._hold_seconds
        held = self._held.get(message["MessageId"])
        if held is not None:
            held.receipt_handle, held.visible_at = message["ReceiptHandle"], visible_at
            log.info("message received again while in flight here; not run twice", message_id=message["MessageId"])
            return None
        self._held[message["MessageId"]] = Held(message["ReceiptHandle"], received_at, visible_at)
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
        """Extend every held message (in flight or waiting) whose visibility lapses soon, never
        past MAXIMUM_HOLD_SECONDS after its receive."""
        now = time.monotonic()
        margin = max(EXTEND_MARGIN_SECONDS, self._hold_seconds / 2)
        due = {
            held.receipt_handle: (held, seconds)
            for held in self._held.values()
            if held.visible_at - now < margin
            and (seconds := min(self._hold_seconds, math.floor(held.received_at + MAXIMUM_HOLD_SECONDS - now))) > 0
        }
        extended = await self._queue.change_visibility([(handle, seconds) for handle, (_, seconds) in due.items()])
        for handle, (held, seconds) in due.items():
            if handle in extended:
                held.visible_at = now + seconds

    def hold_deadline(self, batch: Batch) -> float | None:
        """MAXIMUM_HOLD_SECONDS after the receive of the batch's oldest message."""
        received = [held.received_at for record in batch.records if (held := self._held.get(record.item_id))]
        return min(received) + MAXIMUM_HOLD_SECONDS if received else None

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
        held = [self._held.pop(record.item_id, None) for record in returning]
        await self._queue.change_visibility([(item.receipt_handle, 0) for item in held if item is not None])

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
        done = [self._held.pop(record.item_id, None) for record in batch.records if record.item_id not in failed]
        returning = [self._held.pop(record.item_id, None) for record in back]
        self._deleted.inc(await self._queue.delete([held.receipt_handle for held in done if held is not None]))
        now = time.monotonic()
        await self._queue.change_visibility(
            [
                (held.receipt_handle, max(0, math.ceil(held.received_at + self._visibility_timeout - now)))
                for held in returning
                if held is not None and self._was_extended(held)
            ]
        )

    @property
    def _hold_seconds(self) -> int:
        return max(self._visibility_timeout, MINIMUM_HOLD_SECONDS)

    def _was_extended(self, held: Held) -> bool:
        """A message never extended reappears on its own, exactly when SQS would bring it back."""
        return held.visible_at > held.received_at + self._visibility_timeout


def _wait_seconds(window_remaining: float | None) -> int:
    """Long-poll the full 20 s while nothing is gathered; within a window, until it closes."""
    if window_remaining is None:
        return RECEIVE_WAIT_SECONDS
    return min(RECEIVE_WAIT_SECONDS, math.ceil(window_remaining))
