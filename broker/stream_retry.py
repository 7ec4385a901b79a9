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
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from broker import backoff, metrics, records
from broker.batch_response import failed_items
from broker.destinations import kind_for
from broker.errors import BatchLostError, DestinationError
from broker.logs import get_logger
from broker.mapping import EventSourceMapping
from broker.model import Result, Status, new_request_id
from broker.sources.base import Batch, Source

RETRY_DELAY_SECONDS = (0.1, 5.0)  # first and largest pause between retries of a failing batch
THROTTLE_DELAY_SECONDS = (0.5, 30.0)
DESTINATION_DELAY_SECONDS = (1.0, 60.0)
RETRIES_EXHAUSTED = "RetryAttemptsExhausted"
RECORD_AGE_EXCEEDED = "RecordAgeExceeded"
log = get_logger(__name__)


@dataclass
class _Attempts:
    retries: int = 0  # function errors spent against MaximumRetryAttempts
    invokes: int = 0  # runs that reached the function (approximateInvokeCount)
    last: Result | None = None


async def deliver_in_place(
    source: Source,
    mapping: EventSourceMapping,
    batch: Batch,
    invoke: Callable[[Batch], Awaitable[Result]],
    on_failure: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Run `batch` until it succeeds or its failures are routed; return when it may be settled."""
    await _Delivery(source, mapping, invoke, on_failure).run(batch, _Attempts())


class _Delivery:
    def __init__(
        self,
        source: Source,
        mapping: EventSourceMapping,
        invoke: Callable[[Batch], Awaitable[Result]],
        on_failure: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.source = source
        self.mapping = mapping
        self._invoke = invoke
        self._on_failure = on_failure
        self.retry_limit = _retry_limit(source, mapping)
        self._labels = (mapping.uuid, mapping.source_kind)

    async def run(self, batch: Batch, attempts: _Attempts) -> None:
        pending: Batch | None = batch
        while pending is not None and self.source.owns(pending):
            pending = await self._expire(pending, attempts)
            if pending is None:
                return
            result = await self._invoke_until_run(pending, attempts)
            if result is None:  # throttled until records expired or the lane was lost: look again
                continue
            failed = failed_items(result, pending, self.mapping.reports_batch_item_failures, self.source.item_id_of)
            if not failed:
                return
            if (
                self.mapping.bisect_batch_on_function_error
                and result.status is Status.FUNCTION_ERROR
                and len(pending) > 1
            ):
                await self._bisect(pending, attempts)
                return
            pending = await self._retry_or_give_up(_from_first_failure(pending, failed), attempts)

    async def _retry_or_give_up(self, pending: Batch, attempts: _Attempts) -> Batch | None:
        if self.retry_limit is not None and attempts.retries >= self.retry_limit:
            await self._give_up(pending, attempts, RETRIES_EXHAUSTED)
            return None
        attempts.retries += 1
        log.info("batch failed; retrying", mapping=self.mapping.uuid, lane=pending.lane, retry=attempts.retries)
        await asyncio.sleep(_backoff(RETRY_DELAY_SECONDS, attempts.retries - 1))
        return pending

    async def _bisect(self, batch: Batch, attempts: _Attempts) -> None:
        middle = len(batch) // 2
        for half in (batch.records[:middle], batch.records[middle:]):
            await self.run(Batch(half, batch.lane), dataclasses.replace(attempts))

    async def _invoke_until_run(self, batch: Batch, attempts: _Attempts) -> Result | None:
        """Invoke; on a throttle or an unreachable queue wait and try again, spending no retry."""
        waited = 0
        while True:
            try:
                result = await self._invoke(batch)
            except BatchLostError as error:
                log.warning("the batch's invocation will never answer; retrying it", error=error.message)
                metrics.ESM_EVENTS.labels(*self._labels, "handed_back").inc(len(batch))
            else:
                if result.status is not Status.THROTTLED:
                    attempts.invokes += 1
                    attempts.last = result
                    return result
            if not self.source.owns(batch) or self._expired(batch):
                return None
            await asyncio.sleep(_backoff(THROTTLE_DELAY_SECONDS, waited))
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
        await self._give_up(Batch(old, batch.lane), attempts, RECORD_AGE_EXCEEDED)
        rest = tuple(record for index, record in enumerate(batch.records) if index not in expired)
        return Batch(rest, batch.lane) if rest else None

    # -- giving up ----------------------------------------------------------------------------------
    async def _give_up(self, batch: Batch, attempts: _Attempts, condition: str) -> None:
        target = self.mapping.on_failure_destination
        log.warning(
            "records given up",
            mapping=self.mapping.uuid,
            lane=batch.lane,
            condition=condition,
            count=len(batch),
        )
        if target is None:
            self._count("dropped", len(batch))
            return
        record = self._failure_record(batch, attempts, condition)
        failures = 0
        while self.source.owns(batch):
            try:
                await self._on_failure(record)
            except DestinationError as error:
                metrics.DESTINATION_FAILURES.labels(
                    self.mapping.function_name, "on_failure", kind_for(target).kind
                ).inc()
                log.warning("on-failure destination write failed; retrying", target=target, error=error.message)
                await asyncio.sleep(_backoff(DESTINATION_DELAY_SECONDS, failures))
                failures += 1
            else:
                self._count("on_failure_delivered", len(batch))
                return

    def _failure_record(self, batch: Batch, attempts: _Attempts, condition: str) -> dict[str, Any]:
        """Lambda's stream/Kafka on-failure record; key order as AWS emits it."""
        settings = self.source.context
        last = attempts.last
        record: dict[str, Any] = {
            "requestContext": {
                "requestId": last.request_id if last else new_request_id(),
                "functionArn": records.function_arn(
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
            record["responseContext"] = context
        record["version"] = "1.0"
        record["timestamp"] = records.iso_timestamp(time.time())
        record.update(self.source.failure_record_info(batch))
        return record

    def _count(self, stage: str, events: int) -> None:
        metrics.ESM_EVENTS.labels(*self._labels, stage).inc(events)


def _retry_limit(source: Source, mapping: EventSourceMapping) -> int | None:
    """MaximumRetryAttempts, None for infinite; Kafka caps -1 at 10 when there is a destination."""
    if mapping.maximum_retry_attempts >= 0:
        return mapping.maximum_retry_attempts
    if mapping.on_failure_destination is not None:
        return source.retry_cap_with_on_failure
    return None


def _from_first_failure(batch: Batch, failed: frozenset[str]) -> Batch:
    """The batch from its first failed record on: the log is checkpointed just before it."""
    first = next(index for index, record in enumerate(batch.records) if record.item_id in failed)
    return Batch(batch.records[first:], batch.lane)


def _backoff(bounds: tuple[float, float], step: int) -> float:
    return backoff.delay(step, *bounds)
