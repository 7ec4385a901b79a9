"""Pollers hand batches to workers through the invocation queue, and await the result here.

A batch is a RequestResponse invocation with a reply key. Every wait has a deadline:

- While the batch's job exists (queued behind a backlog, or running), the sender keeps waiting:
  the job's own life is bounded by the workers (the function timeout kills a run; a dead
  worker's lease lapses and its job goes back to the queue), and the source keeps the batch
  alive meanwhile (SQS visibility, a paused Kafka partition).
- Every slice (`BLOCK_SLICE_SECONDS`) the sender checks that the job is still pending. A job that
  is gone with no reply (deleted, quarantined) will never answer: `BatchLostError` is raised at once,
  and the poller hands the batch back to its source (SQS: visible again; Kafka: retried in order).
- The event is encoded by the caller first (`encode_event`): an event that is not JSON (a value a
  source shaped that JSON cannot hold) raises `InvalidRequestContent`, Lambda's error for a payload
  that is not JSON, before anything is queued, so the poller can set that input aside.
- A caller may pass `give_up_at` (monotonic seconds), the most its source can hold a batch (SQS:
  its 12-hour visibility limit); past it `BatchLostError` is raised even though the job still exists.
- Redis errors of every class (connection lost, timeouts, LOADING, READONLY, OOM) are retried
  with backoff, for the enqueue and the wait alike; the batch is never dropped and the poller
  never crashes on them. An enqueue retried after an ambiguous failure may store the job twice:
  the batch then runs twice (at-least-once), and the first reply wins.

If the poller dies while waiting, the batch was never acknowledged, so its records come back from
the source: at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from broker import keys, metrics
from broker.backoff import Backoff
from broker.connection import StoreError, connect, connect_async
from broker.errors import BatchLostError, InvalidRequestContent, StoreUnavailable
from broker.invocation import Invocation, InvocationType, Result
from broker.logs import get_logger
from broker.queue import BLOCK_SLICE_SECONDS, InvocationQueue

STORE_RETRY_SECONDS = (0.1, 5.0)  # first and longest pause while Redis is away
STORE_ERRORS = (StoreError, OSError, StoreUnavailable)
log = get_logger(__name__)


class Sender:
    def __init__(self, redis_url: str) -> None:
        self._queue = InvocationQueue(connect(redis_url))
        self._redis = connect_async(redis_url)

    async def invoke(
        self, function_name: str, payload: str, trigger: str, *, give_up_at: float | None = None
    ) -> Result:
        """Run the batch (its event as `encode_event` wrote it) and return its result; raise
        BatchLostError when no result can come (see above)."""
        invocation = Invocation(function_name, payload, InvocationType.REQUEST_RESPONSE, trigger=trigger)
        reply_to = keys.reply(invocation.function_name, invocation.request_id)
        job_id = await self._enqueue(invocation.replace(reply_to=reply_to), give_up_at)
        return await self._await_reply(function_name, job_id, reply_to, give_up_at)

    async def _enqueue(self, invocation: Invocation, give_up_at: float | None) -> str:
        backoff = Backoff(*STORE_RETRY_SECONDS, jitter=0.2)
        while True:
            try:
                return await asyncio.to_thread(self._queue.enqueue, invocation)
            except STORE_ERRORS as error:
                _store_error("enqueue", error)
            _check_hold(give_up_at, "the invocation queue stayed unreachable")
            await asyncio.sleep(backoff.next())

    async def _await_reply(self, function_name: str, job_id: str, reply_to: str, give_up_at: float | None) -> Result:
        backoff = Backoff(*STORE_RETRY_SECONDS, jitter=0.2)
        while True:
            try:
                popped = await self._redis.blpop([reply_to], timeout=_slice(give_up_at))
                if popped is not None:
                    return Result.from_wire(popped[1])
                if not await asyncio.to_thread(self._queue.job_pending, function_name, job_id):
                    return await self._last_look(job_id, reply_to)
                backoff.reset()
            except STORE_ERRORS as error:
                _store_error("wait", error)
                await asyncio.sleep(backoff.next())
            _check_hold(give_up_at, f"job {job_id} did not answer before its source's hold limit")

    async def _last_look(self, job_id: str, reply_to: str) -> Result:
        """The job is gone: its reply, if any, was written with its removal; else it is lost."""
        popped = await self._redis.lpop(reply_to)
        if isinstance(popped, bytes | str):
            return Result.from_wire(popped)
        log.warning("the batch's job vanished without a reply; handing the batch back", job_id=job_id)
        raise BatchLostError(f"job {job_id} vanished (deleted or quarantined) without a reply")

    async def close(self) -> None:
        await self._redis.aclose()
        self._queue.redis.close()


def encode_event(event: dict[str, Any]) -> str:
    """The event as the JSON text a function receives; `InvalidRequestContent` when a value cannot be
    JSON (bytes, a datetime, a set: whatever a source's shape let through), or nests too deep."""
    try:
        return json.dumps(event)
    except (TypeError, ValueError, RecursionError) as error:
        raise InvalidRequestContent(f"the event is not JSON-serialisable: {error}") from error


def _slice(give_up_at: float | None) -> float:
    """How long one BLPOP may block: a slice, less when the hold limit is nearer."""
    if give_up_at is None:
        return BLOCK_SLICE_SECONDS
    return max(0.01, min(BLOCK_SLICE_SECONDS, give_up_at - time.monotonic()))


def _check_hold(give_up_at: float | None, why: str) -> None:
    if give_up_at is not None and time.monotonic() >= give_up_at:
        log.warning("batch held to its source's limit; handing it back", reason=why)
        raise BatchLostError(why)


def _store_error(operation: str, error: Exception) -> None:
    metrics.STORE_ERRORS.labels(type(error).__name__).inc()
    log.warning("Redis refused or did not answer; retrying", operation=operation, error=str(error))
