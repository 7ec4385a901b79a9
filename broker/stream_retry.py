"""Lambda's failure handling for log sources (Kafka, Kinesis, DynamoDB Streams): retry in place.

A log is ordered, so a failing batch blocks its lane until it succeeds or is given up; only then
does `deliver_in_place` return and the poller settle (commit past) the batch. The rules, as Lambda
applies them to streams and Kafka:

- A function error (timeouts and crashes included) retries the whole batch, up to
  MaximumRetryAttempts (-1: until the records are too old; for Kafka with an on-failure
  destination, Lambda caps -1 at 10: `Source.retry_cap_with_on_failure`).
- With ReportBatchItemFailures, a partial answer retries from the lowest failed record to the end
  of the batch (records after it that succeeded run again); this spends a retry, as LocalStack
  does (Lambda's documentation does not say).
- BisectBatchOnFunctionError splits a failing batch in two and runs each half in order, spending
  no retry; each half carries the retries spent so far.
- The source sees every answer before it counts (`Source.accept_answer`): a tumbling window takes
  the returned `state` there, and an answer it refuses (no `state`) fails the whole batch.
- A throttle, or an invocation whose job vanished without an answer (`BatchLostError`), backs off and
  spends no retry; the batch is retried in order.
- Records older than MaximumRecordAgeInSeconds are not invoked: they go to the on-failure
  destination with condition RecordAgeExceeded and no responseContext.
- The caller's `invoke` counts what it invokes (the poller does); this module counts only what it
  drops and what reaches the on-failure destination.
- Given up records become one on-failure record (RetryAttemptsExhausted, approximateInvokeCount,
  the source's `...BatchInfo`: metadata only). Its delivery is retried until it succeeds, never
  dropped: Lambda drops the batch when the write fails, Headwater keeps the lane blocked instead.
  Without a destination the records are dropped and counted.
- A lane the source no longer owns (rebalance, lost lease) is abandoned: its next owner re-reads it.
- A batch of no records (`Batch.final`, a tumbling window's final invoke) is retried like any other;
  it fails as a whole (there is nothing to bisect), and its on-failure record has batchSize 0 and
  the range of the records it concludes.
- Records whose event cannot be built or encoded (`InvalidRequestContent`, raised before anything
  runs) are never invoked: the caller's `set_aside` names them (and reports them as unreadable), they
  go to the on-failure destination with condition RecordUnreadable (or are dropped without one), and
  the rest of the batch goes on. Without `set_aside` the error is the caller's.
- On-failure messages are `Message`s: JSON bodies, and the key the source gives each (a Kafka record's
  own key in the per-record form).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from broker import backoff, invocation_records, metrics
from broker.batch_response import failed_items
from broker.destinations import kind_for
from broker.destinations.base import Message
from broker.errors import BatchLostError, DestinationError, InvalidRequestContent
from broker.invocation import Result, Status, new_request_id
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.sources.base import Batch, Source

RETRY_DELAY_SECONDS = (0.1, 5.0)  # first and largest pause between retries of a failing batch
THROTTLE_DELAY_SECONDS = (0.5, 30.0)
DESTINATION_DELAY_SECONDS = (1.0, 60.0)
RETRIES_EXHAUSTED = "RetryAttemptsExhausted"
RECORD_AGE_EXCEEDED = "RecordAgeExceeded"
RECORD_UNREADABLE = "RecordUnreadable"  # Headwater's own: Lambda never meets an event it cannot encode
log = get_logger(__name__)

Invoke = Callable[[Batch], Awaitable[Result]]
OnFailure = Callable[[Message], Awaitable[None]]
SetAside = Callable[[Batch, InvalidRequestContent], Awaitable[frozenset[str]]]


@dataclass
class _Attempts:
    retries: int = 0  # function errors spent against MaximumRetryAttempts
    invokes: int = 0  # runs that reached the function (approximateInvokeCount)
    last: Result | None = None


async def deliver_in_place(
    source: Source,
    mapping: EventSourceMapping,
    batch: Batch,
    invoke: Invoke,
    on_failure: OnFailure,
    *,
    set_aside: SetAside | None = None,
) -> None:
    """Run `batch` until it succeeds or its failures are routed; return when it may be settled."""
    await _Delivery(source, mapping, invoke, on_failure, set_aside).run(batch, _Attempts())


class _Delivery:
    def __init__(
        self,
        source: Source,
        mapping: EventSourceMapping,
        invoke: Invoke,
        on_failure: OnFailure,
        set_aside: SetAside | None,
    ) -> None:
        self.source = source
        self.mapping = mapping
        self._invoke = invoke
        self._on_failure = on_failure
        self._set_aside = set_aside
        self.retry_limit = _retry_limit(source, mapping)
        self._labels = (mapping.uuid, mapping.source_kind)

    async def run(self, batch: Batch, attempts: _Attempts) -> None:
        pending: Batch | None = batch
        while pending is not None and self.source.owns(pending):
            pending = await self._expire(pending, attempts)
            if pending is None:
                return
            try:
                result = await self._invoke_until_run(pending, attempts)
            except InvalidRequestContent as error:
                pending = await self._give_up_unreadable(pending, attempts, error)
                continue
            if result is None:  # throttled until records expired or the lane was lost: look again
                continue
            failed = self._failed(pending, result)
            if failed is None:
                return
            if (
                self.mapping.bisect_batch_on_function_error
                and result.status is Status.FUNCTION_ERROR
                and len(pending) > 1
            ):
                await self._bisect(pending, attempts)
                return
            pending = await self._retry_or_give_up(_from_first_failure(pending, failed), attempts)

    def _failed(self, batch: Batch, result: Result) -> frozenset[str] | None:
        """The records `result` fails, None when the batch succeeded; all of them when the source
        refuses the answer (a tumbling window's response without `state`). A batch of no records
        fails as a whole: an empty set."""
        failed = failed_items(result, batch, self.mapping.reports_batch_item_failures, self.source.item_id_of)
        if not self.source.accept_answer(batch, result, failed):
            return frozenset(record.item_id for record in batch.records)
        if failed or result.status is not Status.SUCCESS:
            return failed
        return None

    async def _give_up_unreadable(
        self, batch: Batch, attempts: _Attempts, error: InvalidRequestContent
    ) -> Batch | None:
        """Route the records `set_aside` names as unreadable; return the rest, or None if none are left."""
        if self._set_aside is None:
            raise error
        named = await self._set_aside(batch, error)
        unreadable = named & {record.item_id for record in batch.records} or {r.item_id for r in batch.records}
        bad = tuple(record for record in batch.records if record.item_id in unreadable)
        await self._give_up(batch.with_records(bad), attempts, RECORD_UNREADABLE)
        rest = tuple(record for record in batch.records if record.item_id not in unreadable)
        return batch.with_records(rest) if rest else None

    async def _retry_or_give_up(self, pending: Batch, attempts: _Attempts) -> Batch | None:
        if self.retry_limit is not None and attempts.retries >= self.retry_limit:
            await self._give_up(pending, attempts, RETRIES_EXHAUSTED)
            return None
        attempts.retries += 1
        log.info("batch failed; retrying", mapping=self.mapping.uuid, lane=pending.lane, retry=attempts.retries)
        await asyncio.sleep(backoff.delay(attempts.retries - 1, *RETRY_DELAY_SECONDS))
        return pending

    async def _bisect(self, batch: Batch, attempts: _Attempts) -> None:
        middle = len(batch) // 2
        for half in (batch.records[:middle], batch.records[middle:]):
            await self.run(batch.with_records(half), dataclasses.replace(attempts))

    async def _invoke_until_run(self, batch: Batch, attempts: _Attempts) -> Result | None:
        """Invoke; on a throttle or an unreachable queue wait and try again, spending no retry."""
        waited = 0
        while True:
            try:
                result = await self._invoke(batch)
            except BatchLostError as error:
                log.warning("the batch's invocation will never answer; retrying it", error=error.message)
                metrics.MAPPING_EVENTS.labels(*self._labels, "handed_back").inc(len(batch))
            else:
                if result.status is not Status.THROTTLED:
                    attempts.invokes += 1
                    attempts.last = result
                    return result
            if not self.source.owns(batch) or self._expired(batch):
                return None
            await asyncio.sleep(backoff.delay(waited, *THROTTLE_DELAY_SECONDS))
            waited += 1

    # -- record age ---------------------------------------------------------------------------------
    def _expired(self, batch: Batch) -> list[int]:
        limit = self.mapping.maximum_record_age_in_seconds
        if limit < 0:
            return []
        now = time.time()
        return [index for index, record in enumerate(batch.records) if now - record.arrived_at > limit]

    async def _expire(self, batch: Batch, attempts: _Attempts) -> Batch | None:
        """Route the records too old to invoke; return the rest, or None if none are left."""
        expired = set(self._expired(batch))
        if not expired:
            return batch
        old = tuple(record for index, record in enumerate(batch.records) if index in expired)
        await self._give_up(batch.with_records(old), attempts, RECORD_AGE_EXCEEDED)
        rest = tuple(record for index, record in enumerate(batch.records) if index not in expired)
        return batch.with_records(rest) if rest else None

    # -- giving up ----------------------------------------------------------------------------------
    async def _give_up(self, batch: Batch, attempts: _Attempts, condition: str) -> None:
        """Route given-up records to the on-failure destination: one batch-level record, or one message
        per record where the source writes that form to the target (a Kafka mapping's `kafka://` topic).
        Returns once every message is written, so the lane moves on only then (at-least-once); a message
        already written is not written again when a later one fails, and a lane lost meanwhile is left
        to its next owner, which gives the records up again (duplicates, never loss)."""
        target = self.mapping.on_failure_destination
        log.warning(
            "records given up",
            mapping=self.mapping.uuid,
            lane=batch.lane,
            condition=condition,
            count=len(batch),
            final=batch.final,
        )
        if target is None:
            self._count("dropped", len(batch))
            return
        for message in self._failure_messages(batch, attempts, condition, target):
            if not await self._write_until_done(message, batch, target):
                return
        self._count("on_failure_delivered", len(batch))

    async def _write_until_done(self, message: Message, batch: Batch, target: str) -> bool:
        """Write one on-failure message, retrying while the lane is ours; False once it is not."""
        failures = 0
        while self.source.owns(batch):
            try:
                await self._on_failure(message)
            except DestinationError as error:
                metrics.DESTINATION_FAILURES.labels(
                    self.mapping.function_name, "on_failure", kind_for(target).name
                ).inc()
                log.warning("on-failure destination write failed; retrying", target=target, error=error.message)
                await asyncio.sleep(backoff.delay(failures, *DESTINATION_DELAY_SECONDS))
                failures += 1
            else:
                return True
        return False

    def _failure_messages(self, batch: Batch, attempts: _Attempts, condition: str, target: str) -> list[Message]:
        """The messages `target` gets: the source's per-record form when it has one for the target (each
        with its key), else the batch-level record. Both open with the same contexts, version and timestamp."""
        parts = self.source.failure_record_parts(batch, target)
        if parts is None:
            return [Message(body=json.dumps(self._failure_record(batch, attempts, condition)))]
        opening = self._failure_opening(attempts, condition)
        return [Message(body=json.dumps({**opening, **part.fields}), key=part.key) for part in parts]

    def _failure_record(self, batch: Batch, attempts: _Attempts, condition: str) -> dict[str, Any]:
        """Lambda's batch-level stream/Kafka on-failure record; key order as AWS emits it."""
        return {**self._failure_opening(attempts, condition), **self.source.failure_record_info(batch)}

    def _failure_opening(self, attempts: _Attempts, condition: str) -> dict[str, Any]:
        """requestContext, responseContext (after a function error only), version and timestamp.

        Records given up after their retries say RETRIES_EXHAUSTED ("RetryAttemptsExhausted", as every
        stream source's do) in both forms, although Lambda's page on Kafka-topic destinations shows
        "RetriesExhausted" in its one example; which AWS sends is unconfirmed (spec §3.3), so Headwater
        keeps the one name the rest of its stream handling uses."""
        settings = self.source.context
        last = attempts.last
        opening: dict[str, Any] = {
            "requestContext": {
                "requestId": last.request_id if last else new_request_id(),
                "functionArn": invocation_records.function_arn(
                    settings.region, settings.account_id, self.mapping.function_name, None
                ),
                "condition": condition,
                "approximateInvokeCount": attempts.invokes,
            }
        }
        if condition == RETRIES_EXHAUSTED and last is not None:
            context: dict[str, Any] = {"statusCode": 200, "executedVersion": last.executed_version}
            if last.function_error:
                context["functionError"] = last.function_error
            opening["responseContext"] = context
        opening["version"] = "1.0"
        opening["timestamp"] = invocation_records.iso_timestamp(time.time())
        return opening

    def _count(self, stage: str, events: int) -> None:
        metrics.MAPPING_EVENTS.labels(*self._labels, stage).inc(events)


def _retry_limit(source: Source, mapping: EventSourceMapping) -> int | None:
    """MaximumRetryAttempts, None for infinite; Kafka caps -1 at 10 when there is a destination."""
    if mapping.maximum_retry_attempts >= 0:
        return mapping.maximum_retry_attempts
    if mapping.on_failure_destination is not None:
        return source.retry_cap_with_on_failure
    return None


def _from_first_failure(batch: Batch, failed: frozenset[str]) -> Batch:
    """The batch from its first failed record on: the log is checkpointed just before it. A failure
    that names no record (a batch of none) retries the whole batch."""
    first = next((index for index, record in enumerate(batch.records) if record.item_id in failed), 0)
    return batch.with_records(batch.records[first:])
